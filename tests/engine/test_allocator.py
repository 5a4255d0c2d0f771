import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
from napari_xt.engine.allocator import few_arenas
print(json.dumps([few_arenas(), few_arenas()]))
"""


def _calls(env) -> list:
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_few_arenas_is_set_once_and_never_over_the_persons_own_setting():
    import os

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _calls(env) == [True, False]  # glibc took it, and a second run does not ask again
    assert _calls({**env, "MALLOC_ARENA_MAX": "4"}) == [False, False]


RELEASE = """
import json, psutil
from napari_xt.engine.allocator import release_free
blocks = [bytearray(2000) for _ in range(40_000)]  # 80 MB of glibc heap (too large for Python's own arenas)
blocks = blocks[::10]  # most freed, with live blocks left scattered over the heap up to its top
rss = psutil.Process().memory_info().rss
done = release_free()
print(json.dumps([done, rss - psutil.Process().memory_info().rss, len(blocks)]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_hands_free_pages_between_live_blocks_back():
    done = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, check=True)
    released, freed, left = json.loads(done.stdout.strip().splitlines()[-1])
    assert released is True and left == 4_000
    assert freed > 40e6  # bytes: pages wholly free between the live blocks (72 MB of blocks were freed)
