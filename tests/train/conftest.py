import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from open_instruct.model.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "model", seed=0)
