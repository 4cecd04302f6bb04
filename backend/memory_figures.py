"""Peak GPU memory in GB per preset, offloading (none / priors) and stage: `dreampolish-backend dryrun` at
full geometry with the PyTorch rasteriser, whose figure bounds nvdiffrast's from above (the dry run cannot run
nvdiffrast). GENERATED from bench/dryrun/*.json by backend/commands/dryrun_table.py; do not edit by hand
(tests/backend/test_memory_figures.py checks it against those reports). Read by backend/memory_check.py."""

DRY_RUN_GB: dict[str, dict[str, dict[str, float]]] = {}
