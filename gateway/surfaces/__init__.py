"""Client-facing API surfaces translated to and from the gateway's chat-completions pipeline."""
