"""The pytest suite of the Python package (run by `make test` through ctest: python.pytest)."""
import os

import pytest
import torch

import moe  # noqa: F401  (an import error fails the whole run at collection)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def parity_helper():
    path = os.environ.get("MOE_PARITY_HELPER")
    if not path or not os.path.exists(path):
        pytest.fail("MOE_PARITY_HELPER must name the moe_python_parity program (ctest sets it)")
    return path
