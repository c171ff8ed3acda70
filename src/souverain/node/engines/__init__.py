"""Engine launchers: how to start llama.cpp (llama-server or llama-cpp-python), vLLM, the
embeddings engine or the stand-in for a replica, and their process entry points."""
