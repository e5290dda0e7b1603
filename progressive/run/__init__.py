"""Run folders, snapshots and the one-writer lock."""
