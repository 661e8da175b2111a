"""Constants shared by the model, the data pipeline and the tools (values from REFERENCE.md)."""

IGNORE_INDEX = -100          # label / unit-target padding, ignored by the losses
SPEECH_TOKEN_INDEX = -200    # placeholder id spliced out for the projected speech features
SPEECH_PLACEHOLDER = "<speech>"

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS          # 480 000 samples = 30 s
N_FRAMES = N_SAMPLES // HOP_LENGTH               # 3 000 mel frames

SYSTEM_PROMPT = (
    "You are a helpful language and speech assistant. You are able to understand the speech "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)
# The repository's examples use this wording; the paper writes
# "Please answer the questions in the user's input speech."
DEFAULT_INSTRUCTION = "Please directly answer the questions in the user's speech."

UNIT_VOCAB_SIZE = 1000       # k-means clusters; CTC blank is the extra class 1000
