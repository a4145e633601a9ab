"""Evaluate with mmplug's modules registered: ``mmplug.test`` (``python -m mmplug.test``) in
a clone. See ``python tools/test.py --help``."""
from mmplug.test import main

if __name__ == '__main__':
    main()
