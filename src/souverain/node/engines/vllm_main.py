"""Entry point of a vLLM engine process: vLLM's OpenAI server, given the replica secret
in-process (vLLM reads VLLM_API_KEY; set here, after start, it is not in the process's
environment block in /proc). Arguments are vLLM's own."""

from __future__ import annotations

import os
import runpy
import sys

from souverain.node.secret import read_secret


def main() -> None:
    os.environ["VLLM_API_KEY"] = read_secret()
    sys.argv = ["vllm.entrypoints.openai.api_server", *sys.argv[1:]]
    runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__")


if __name__ == "__main__":
    main()
