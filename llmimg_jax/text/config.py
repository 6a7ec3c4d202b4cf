"""Default `text` section: tokenizer and the language model used as text encoder.

`encoder="gpt2"` reads tokenizer_dir, vocab_size, preset, lm_workdir and pooling; `encoder="bert"` takes weights
and tokenizer from `encoder_path` and always pools by the mean over real tokens (sentence-transformers' pooling).
"""

import ml_collections


def default_text_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        tokenizer_dir="",         # '' -> trained on the data set's texts into WORKDIR/tokenizer
        vocab_size=1024,          # for a trained tokenizer
        max_length=48,            # tokens per text (padded / truncated)
        encoder="gpt2",           # 'gpt2' | 'bert'
        encoder_path="",          # bert: a local Hugging Face BERT directory; '' -> the shipped all-MiniLM-L6-v2
        preset="tiny",            # GPT-2 preset when trained from scratch
        lm_workdir="",            # take the LM (and tokenizer) from this workdir
        trainable=False,          # True: the generator's loss trains the encoder end to end
        layer=-1,                 # which block's output is the token states (-1: last, after GPT-2's ln_f)
        pooling="last",           # pooled text vector: 'last' real token (GPT-2 reads causally) or 'mean'
    ))
