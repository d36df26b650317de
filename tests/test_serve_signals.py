"""tools/serve.py stopped by SIGINT (Ctrl-C) or SIGTERM: a request in flight is answered, then the
server exits 128 + the signal (130, 143) with one line; a real server process on a loopback port."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import run_cli

pytest.importorskip("fastapi")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW_SEARCH = """
import sys, time
import serving.service as service
search = service.Service.search
service.Service.search = lambda self, *args: (time.sleep(2), search(self, *args))[1]   # a request in flight
from cli.guard import run_guarded
from tools.serve import main
sys.exit(run_guarded(main, sys.argv[1:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_both_signals_finish_in_flight_requests_and_exit_128_plus_the_signal(short_region_checkpoint, region_data,
                                                                            tmp_path, signum):
    from tools.retrieve import main
    index = tmp_path / "s.index"
    assert run_cli(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions",
                          f"{region_data[0]}/f30k_precomp/test_ims.npy", "--out", str(index), "--device", "cpu"]) == 0
    server = subprocess.Popen([sys.executable, "-c", SLOW_SEARCH, "--index", str(index), "--port", "0", "--device",
                               "cpu"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = re.search(r"on (http://\S+) ;", server.stdout.readline()).group(1)
        answers = []
        client = threading.Thread(target=lambda: answers.append(json.load(urllib.request.urlopen(
            f"{url}api/search?q=a+red+dog&k=3", timeout=60))))
        client.start()
        time.sleep(1.0)                                  # the request is in the slow search now
        server.send_signal(signum)
        client.join(timeout=60)
        assert server.wait(timeout=60) == 128 + signum
        assert answers and len(answers[0]["results"]) == 3
        assert f"stopped by {signal.Signals(signum).name}: the server finished its in-flight requests" in \
            server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
