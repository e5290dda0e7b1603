"""The progressive-lmdb dataset format, its reader and writer, and image sources."""
