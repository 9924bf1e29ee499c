"""The trainers are importable from the package root, lazily (importing trl_mars loads no TRL trainer)."""

import subprocess
import sys


def test_lazy_trainer_exports():
    code = (
        "import sys, trl_mars; assert 'trl_mars.trainers.mars2_trainer' not in sys.modules; "
        "from trl_mars import MultiAgentTreeTrainer, MultiAgentTreeConfig, SelfPlayTrainer, ReasoningRecTrainer, "
        "TraceEmbedTrainer, TraceConfig, ReRecConfig, SelfPlayConfig; "
        "assert MultiAgentTreeTrainer.__module__ == 'trl_mars.trainers.mars2_trainer'; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
