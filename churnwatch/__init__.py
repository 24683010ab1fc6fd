"""churnwatch tooling: the CLI, the embedded stack, the SMS gateway stand-in, the sample."""
