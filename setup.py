from setuptools import find_packages, setup

setup(
    name="spt_dist",
    version="0.1.0",
    description="Distributed visual prompt tuning (VPT / SPT) of frozen Vision Transformers",
    packages=find_packages(include=["spt_dist", "spt_dist.*"]),
    package_data={"spt_dist": ["assets/*"]},
    python_requires=">=3.10",
    # torch is left unpinned on purpose: the registry's current torch/torchvision pair
    # is the one that works together (see README, "Install").
    install_requires=[
        "torch",
        "torchvision",
        "timm>=1.0",
        "deepspeed>=0.15",
        "webdataset>=0.2.86",
        "submitit>=1.5",
        "omegaconf>=2.3",
        "tqdm",
        "safetensors",
        "tensorboard",
        "matplotlib",
        "numpy",
        "pillow",
        "scikit-learn",
        "ninja",
    ],
    # Trackers beyond TensorBoard are optional (run.loggers); the client alone is enough for MLflow
    # (mlflow-skinny; the full `mlflow` package adds the UI server).
    extras_require={
        "wandb": ["wandb>=0.15"],
        "mlflow": ["mlflow-skinny>=3.0"],
        # `spt serve`: the HTTP server of a prompt bank
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
        "dev": ["pytest", "pytest-timeout", "pytest-xdist", "wids", "wandb>=0.15", "mlflow-skinny>=3.0",
                "fastapi>=0.110", "uvicorn>=0.29", "httpx"],
    },
    entry_points={"console_scripts": ["spt=spt_dist.cli:main"]},
)
