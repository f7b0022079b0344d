"""Upstream examples against the CRD's openAPIV3Schema (read from manifests/01-crd.yaml)."""

import pytest

import k8slib

EXAMPLES = k8slib.upstream_examples()


def test_there_are_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize("name,obj", EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_is_valid(name, obj):
    assert k8slib.upstream_errors(obj) == []


@pytest.mark.parametrize("spec,why", [
    ({}, "service is required"),
    ({"service": "backend", "match": {"pathPrefix": "api"}}, "pathPrefix must start with /"),
    ({"service": "backend", "strategy": "Random"}, "strategy enum"),
    ({"service": "backend", "retries": {"attempts": 11}}, "attempts <= 10"),
    ({"service": "backend", "retries": {"attempts": -1}}, "attempts >= 0"),
    ({"service": "backend", "timeouts": {"connectMs": 0}}, "timeouts >= 1"),
    ({"service": "backend", "outlierDetection": {"consecutiveFailures": 0}}, "failures >= 1"),
    ({"service": "backend", "outlierDetection": {"baseEjectionSeconds": 3601}}, "ejection <= 3600"),
    ({"service": "backend", "port": 1.5}, "port is int-or-string"),
    ({"service": 5}, "service is a string"),
])
def test_schema_rejects_invalid(spec, why):
    assert k8slib.upstream_errors(k8slib.as_upstream("bad", spec)), why
