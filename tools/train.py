"""Train with mmplug's modules registered: ``mmplug.train`` (``python -m mmplug.train``) in
a clone. See ``python tools/train.py --help``."""
from mmplug.train import main

if __name__ == '__main__':
    main()
