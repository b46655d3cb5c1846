import pytest

from .helpers import FUNCTIONS


@pytest.fixture(params=list(FUNCTIONS))
def func_name(request):
    """Each public function's name in turn."""
    return request.param
