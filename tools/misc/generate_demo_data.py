"""Write the embedded demo data sets (tools/train.py also does this on first use).

    python tools/misc/generate_demo_data.py                  # both, into data/
    python tools/misc/generate_demo_data.py coco_shapes --out-dir /tmp/data --force
"""
import argparse
import os.path as osp
import shutil

from mmplug.data import DEMO_DATASETS, ensure_demo_dataset


def main():
    parser = argparse.ArgumentParser(description='Generate the embedded demo data sets')
    parser.add_argument('names', nargs='*', default=sorted(DEMO_DATASETS),
                        help=f'which sets, among {sorted(DEMO_DATASETS)} (default: all)')
    parser.add_argument('--out-dir', default='data', help='parent folder (default: data)')
    parser.add_argument('--force', action='store_true', help='regenerate even if cached')
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(DEMO_DATASETS))
    if unknown:
        parser.error(f'unknown data set(s) {unknown}; choose among {sorted(DEMO_DATASETS)}')
    for name in args.names:
        root = osp.join(args.out_dir, name)
        if args.force:
            shutil.rmtree(root, ignore_errors=True)
        made = ensure_demo_dataset(root)
        print(f'{root}: {"generated" if made else "up to date"}')


if __name__ == '__main__':
    main()
