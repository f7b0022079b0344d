import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import k8slib  # noqa: E402


@pytest.fixture(scope="session")
def manifests():
    return k8slib.manifest_objects()


@pytest.fixture(scope="session")
def manifest_upstreams():
    return k8slib.manifest_upstreams()


@pytest.fixture(scope="session")
def rendered_default():
    import helm_render

    return helm_render.render(None, release=k8slib.RELEASE, namespace=k8slib.NAMESPACE)


@pytest.fixture(scope="session")
def rendered_custom():
    import helm_render

    return helm_render.render(k8slib.CUSTOM_VALUES, release=k8slib.RELEASE,
                              namespace=k8slib.NAMESPACE)
