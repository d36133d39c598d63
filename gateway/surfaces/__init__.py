"""Client-facing API surfaces other than chat completions, translated to and from the gateway's chat pipeline."""
