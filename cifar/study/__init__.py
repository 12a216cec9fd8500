"""Studies: arms x seeds of train.py runs, and by how much the arms differ and how sure that is.

grid.py (arms, seeds, grid.json, each run's folder and flags), runner.py (training the runs),
results.py (reading the finished runs, study.json), statistics.py, figures.py, markdown.py,
tracker.py (the W&B summary run), cli.py (`python -m cifar.study`).
"""
