"""Fixtures every test module may use: no network anywhere, and CIFAR files without their real md5s."""
import os
import urllib.error
import urllib.request

import pytest
import torchvision


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """torchvision downloads through urllib: any attempt fails as it would offline."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def cifar_without_md5(monkeypatch):
    """torchvision checks CIFAR files against the real md5s; the tiny fixtures only need to exist."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
