# This directory is put first on PYTHONPATH by `autotrace run`; only sitecustomize.py matters.
