"""/v1: the OpenAI- and Mistral-compatible inference API and its request pipeline.

authenticate → check scope → parse and bound → resolve model → route → open usage
record → proxy (stream or not) → settle the usage record exactly once
"""
