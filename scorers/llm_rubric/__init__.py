"""LLM rubric scorer for free responses (any OpenAI-compatible chat-completions endpoint)."""
