"""scripts/bench_pos.py, run as a user runs it (one round, one step, a tiny batch: it runs, it times nothing):
every encoding of conf/pos is in its table, those with a start (pos.options.init) also started as RoPE, except
where that start is refused at the shape, which the script names instead of failing."""
import json
import subprocess
import sys

from rpe_bench import pos
from tests.helpers import PROJECT
from tests.test_inits import STARTS_AS_ROPE_ON_REQUEST


def test_every_encoding_and_every_rope_start_is_in_the_table_and_refused_starts_are_named(tmp_path):
    completed = subprocess.run([sys.executable, "scripts/bench_pos.py", "--rounds", "1", "--steps", "1", "--no-timm",
                                "--shapes", "video", "--batch-size", "2", "--output", str(tmp_path / "bench")],
                               cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:]
    (rows,) = json.loads((tmp_path / "bench.json").read_text())["results"].values()
    encodings = {label.split(" ")[0] for label in rows}
    assert encodings == set(pos.available())
    rope_starts = {label.split(" ")[0] for label in rows if label.endswith("init=rope")}
    # (t, x, y) over 32-channel heads: RoPE's sections are 6, 5, 5 pairs, which 8-channel ComRoPE blocks cannot hold.
    assert rope_starts == set(STARTS_AS_ROPE_ON_REQUEST) - {"comrope_ap", "comrope_ld"}
    for refused in ("comrope_ap", "comrope_ld"):
        assert f"{refused} init=rope: not timed at this shape, init='rope' is not allowed for {refused}" \
               in completed.stdout
