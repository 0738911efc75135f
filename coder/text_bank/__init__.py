"""Class texts (names, WordNet synonyms, LLM attributes, analogous objects, pair texts),
the torch-free CLIP tokenizer and the folded CODER bank."""
