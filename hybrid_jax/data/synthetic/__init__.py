"""The offline synthetic ClothoV2.1-layout dataset of the demo (procedural sounds, captions, keywords)."""
