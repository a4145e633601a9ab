"""tools/analysis/seed_ablation.py: metrics read from the runs' logs, mean +- std per config."""
import json

import pytest

from _harness import load_tool

ablation = load_tool('analysis/seed_ablation.py')


def _log(work_dir, stamp, entries):
    path = work_dir / stamp / 'vis_data'
    path.mkdir(parents=True)
    with open(path / 'scalars.json', 'w') as f:
        f.write(''.join(json.dumps(e) + '\n' for e in entries))


def test_final_metrics_take_the_last_validation_of_the_newest_run(tmp_path):
    assert ablation.final_metrics(str(tmp_path)) is None
    _log(tmp_path, '20260101_000000', [{'coco/bbox_mAP': 0.1, 'step': 1}])
    _log(tmp_path, '20260102_000000', [{'loss': 1.0, 'step': 1},
                                       {'coco/bbox_mAP': 0.2, 'coco/bbox_mAP_50': 0.4},
                                       {'loss': 0.5, 'step': 2},
                                       {'coco/bbox_mAP': 0.3, 'coco/bbox_mAP_50': 0.5}])
    assert ablation.final_metrics(str(tmp_path)) == {'coco/bbox_mAP': 0.3,
                                                     'coco/bbox_mAP_50': 0.5}


def test_finished_runs_are_not_trained_again_and_the_table_is_mean_std(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError('trained a run that had finished')

    monkeypatch.setattr(ablation.subprocess, 'run', no_training)
    runs = {}
    for config, maps in (('a.py', [0.30, 0.34, 0.32]), ('b.py', [0.20, 0.20, 0.26])):
        runs[config] = []
        for seed, value in enumerate(maps):
            work_dir = tmp_path / config / f'seed{seed}'
            _log(work_dir, '20260101_000000', [{'coco/bbox_mAP': value}])
            runs[config].append(ablation.run(config, seed, str(work_dir), []))
    table = ablation.summarise(runs)
    mean, std, values = table['a.py']['coco/bbox_mAP']
    assert values == [0.30, 0.34, 0.32]
    assert mean == pytest.approx(0.32) and std == pytest.approx(0.02)
    text = ablation.to_markdown(table, [0, 1, 2])
    assert '0.320 +- 0.020' in text and '0.220 +- 0.035' in text and 'seeds 0, 1, 2' in text


def test_a_run_without_metrics_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(ablation.subprocess, 'run', lambda *a, **k: None)
    with pytest.raises(RuntimeError, match='no validation metrics'):
        ablation.run('a.py', 0, str(tmp_path / 'empty'), [])
