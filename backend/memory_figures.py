"""Peak GPU memory in GB per preset, offloading (none / priors) and stage: `dreampolish-backend dryrun`
(GEOMETRY below says at which sizes) with the PyTorch rasteriser, whose figure bounds nvdiffrast's from
above (the dry run cannot run nvdiffrast). GENERATED from bench/dryrun/*.json by
backend/commands/dryrun_table.py; do not edit by hand (tests/backend/test_memory_figures.py checks it
against those reports). Read by backend/memory_check.py."""

DRY_RUN_GB: dict[str, dict[str, dict[str, float]]] = {
    "draft": {
        "none": {
            "reference": 8.687,
            "nerf": 10.341,
            "neus": 10.053,
            "dmtet": 10.112,
            "polish": 11.917,
            "texture": 14.091,
            "export": 7.798
        },
        "priors": {
            "reference": 8.687,
            "nerf": 10.341,
            "neus": 10.053,
            "dmtet": 10.112,
            "polish": 6.842,
            "texture": 9.015,
            "export": 2.702
        }
    },
    "high": {
        "none": {
            "reference": 8.687,
            "nerf": 13.6,
            "neus": 10.144,
            "dmtet": 10.112,
            "polish": 12.294,
            "texture": 14.093,
            "export": 7.804
        },
        "priors": {
            "reference": 8.687,
            "nerf": 13.6,
            "neus": 10.144,
            "dmtet": 10.112,
            "polish": 7.219,
            "texture": 9.018,
            "export": 2.699
        }
    },
    "standard": {
        "none": {
            "reference": 8.687,
            "nerf": 13.6,
            "neus": 10.144,
            "dmtet": 10.112,
            "polish": 12.015,
            "texture": 14.091,
            "export": 7.798
        },
        "priors": {
            "reference": 8.687,
            "nerf": 13.6,
            "neus": 10.144,
            "dmtet": 10.112,
            "polish": 6.939,
            "texture": 9.015,
            "export": 2.702
        }
    }
}

GEOMETRY: dict[str, str] = {
    "draft": "full",
    "high": "full",
    "standard": "full"
}
"""Per preset: "full" (the preset's own sizes) or "small" (the stages' own work at the tiny preset's
sizes, the priors at full size: the figures are lower bounds)."""
