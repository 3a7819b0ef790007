"""Executed by ``llm2_eval_hook.pth`` at interpreter start-up; installs the lm-eval registration hook.

Never raises: a broken or partial installation must not break Python start-up. Set ``LLM2_EVAL_NO_HOOK=1`` to
switch the hook off.
"""

import os

if os.environ.get("LLM2_EVAL_NO_HOOK", "") not in ("1", "true", "yes"):
    try:
        from llm2_eval.registration import install_import_hook

        install_import_hook()
    except Exception:  # pragma: no cover - defensive: start-up must survive anything
        pass
