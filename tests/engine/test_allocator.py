import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from napari_xt.engine.allocator import few_arenas
print(json.dumps([few_arenas(), few_arenas()]))
"""


def _calls(env) -> list:
    import json

    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_few_arenas_is_set_once_and_never_over_the_persons_own_setting():
    import os

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _calls(env) == [True, False]  # glibc took it, and a second run does not ask again
    assert _calls({**env, "MALLOC_ARENA_MAX": "4"}) == [False, False]
