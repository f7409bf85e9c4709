import pytest

from accel.testing import tiny_wan_pipeline
from tests.helpers import run


@pytest.fixture(scope="module")
def wan():
    pipe = tiny_wan_pipeline()
    return pipe, run(pipe)
