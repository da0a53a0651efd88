"""Blocks: Prefect's standard block suite, registration, validation and secret masking."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError

from aether_prefect.blocks import AetherConfig, AetherLLMProfile, AetherMCPServer, AetherObjectStore

ALL = [AetherLLMProfile, AetherObjectStore, AetherMCPServer, AetherConfig]


class TestStandardSuite(BlockStandardTestSuite):
    @pytest.fixture(params=ALL, ids=lambda c: c.__name__)
    def block(self, request: pytest.FixtureRequest) -> type:
        return request.param


def test_prefect_block_register_lists_every_type() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "aether_prefect.blocks"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for name in ("Aether LLM Profile", "Aether Object Store", "Aether MCP Server", "Aether Config"):
        assert name in text


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: AetherLLMProfile(timeout_s="soon"), "timeout_s"),
        (lambda: AetherLLMProfile(base_url="api.openai.com"), "http://"),
        (lambda: AetherObjectStore(backend="s3"), "needs a bucket"),
        (lambda: AetherObjectStore(backend="ftp"), "backend"),
        (lambda: AetherMCPServer(transport="http"), "needs a url"),
        (lambda: AetherMCPServer(transport="stdio"), "needs a command"),
        (lambda: AetherConfig(kv_namespace="Bad Name"), "kv_namespace"),
        (lambda: AetherConfig(memory_level="forever"), "memory_level"),
    ],
)
def test_bad_fields_are_typed_errors_with_a_fix(make, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PydanticValidationError) as info:
        make()
    assert fragment in str(info.value)


def test_secrets_round_trip_and_stay_masked() -> None:
    secret = "sk-test-" + "x" * 20
    cfg = AetherConfig(
        llm={"default": AetherLLMProfile(model="m", api_key=SecretStr(secret), headers={"X-Key": "hdr-secret"})},
        store=AetherObjectStore(backend="s3", bucket="b", aws_secret_access_key=SecretStr("aws-secret-zz")),
        mcp={"t": AetherMCPServer(transport="http", url="http://127.0.0.1:1/mcp", headers={"Authorization": "Bearer tok-zz"})},
        kv_namespace="blocks-secret-test",
    )
    cfg.save("blocks-secret-test", overwrite=True)
    loaded = AetherConfig.load("blocks-secret-test")
    assert loaded.llm["default"].api_key.get_secret_value() == secret
    assert loaded.store.aws_secret_access_key.get_secret_value() == "aws-secret-zz"
    assert loaded.mcp["t"].headers.get_secret_value()["Authorization"] == "Bearer tok-zz"
    for text in (repr(loaded), str(loaded), repr(cfg)):
        for s in (secret, "aws-secret-zz", "tok-zz", "hdr-secret"):
            assert s not in text


def test_missing_saved_name_nothing_saved() -> None:
    with pytest.raises(ValueError, match="Unable to find block document"):
        AetherConfig.load("no-such-config-anywhere")
