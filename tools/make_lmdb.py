"""Convert an image collection into a progressive-lmdb dataset (LMDB shards + meta.json).

The same command is installed as `make-lmdb`; see `python tools/make_lmdb.py --help`.
"""

from datasets_prep.make_lmdb import main

if __name__ == "__main__":
    main()
