from pathlib import Path

import pytest

from tiny_dataset import make_raw_dataset, nnunet_env, plan_and_preprocess


@pytest.fixture(scope="session")
def tiny_nnunet(tmp_path_factory) -> Path:
    """A planned and preprocessed tiny nnU-Net dataset (id 990, 2d) in a scratch nnU-Net tree."""
    root = tmp_path_factory.mktemp("nnunet")
    make_raw_dataset(root / "raw")
    plan_and_preprocess(root)
    return root


@pytest.fixture
def nnunet_paths(tiny_nnunet, monkeypatch):
    """Point this process's nnU-Net paths at the tiny dataset (nnunetv2 reads them lazily)."""
    for key, value in nnunet_env(tiny_nnunet).items():
        if key.startswith("nnUNet"):
            monkeypatch.setenv(key, value)
    return tiny_nnunet


@pytest.fixture
def trainer(nnunet_paths):
    """An initialized smoke HiDiff trainer on the tiny dataset, its network in training mode."""
    from trainer_utils import make_trainer

    tr = make_trainer()
    tr.initialize()
    tr.network = tr.hidiff
    tr.hidiff.train()
    return tr
