"""`redcompile bench`: ReDrafter against autoregressive decoding in one runtime, on the same
prompts, split along its seams: what is measured and recorded (`report`), how the engines are
built and timed (`run`), the prompts' sampling error (`intervals`), the decoding step's split
by category (`step_split`) and the plots (`plot`). `report` imports neither torch nor numpy, so
the CLI shows its defaults without loading a runtime."""
