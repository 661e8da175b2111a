"""Shapes, parameter counts and hand-worked values of the model pieces (REFERENCE.md)."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig

from omni_ds.hf_compat import rope_parameters
from omni_ds.model.ctc_decoder import CTCSpeechGenerator, ctc_collapse, upsample_assignment
from omni_ds.model.omni_config import OmniConfig
from omni_ds.model.omni_model import OmniSpeechModel
from omni_ds.model.projector import SpeechProjector


def llama31_8b_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def whisper_large_v3_config() -> WhisperConfig:
    return WhisperConfig(num_mel_bins=128, d_model=1280, encoder_layers=32, encoder_attention_heads=20,
                         encoder_ffn_dim=5120, max_source_positions=1500, decoder_layers=1)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_full_size_parameter_counts_on_meta_device():
    with torch.device("meta"):
        llm = LlamaForCausalLM(llama31_8b_config())
        model = OmniSpeechModel(OmniConfig(), whisper_large_v3_config(), llm)
    assert count(model.speech_projector) == 21_501_952
    assert count(model.speech_generator) == 425_649_129
    assert count(model.llm) == 8_030_261_248
    # Whisper-large-v3 encoder: 635.0 M weights + the 1500 x 1280 position table (a buffer in
    # openai-whisper, an embedding in transformers)
    assert count(model.speech_encoder) == 635_048_960 + 1500 * 1280
    gen = model.speech_generator
    assert gen.output_proj.out_features == 1001 and gen.blank == 1000
    rope = rope_parameters(gen.config)
    assert gen.config.num_key_value_heads == 32 and rope["rope_theta"] == 500000.0
    assert rope["rope_type"] == "llama3" and rope == rope_parameters(llm.config)


def test_projector_concatenates_k_consecutive_frames_and_drops_the_tail():
    proj = SpeechProjector(encoder_dim=2, llm_dim=3, k=2, hidden=4)
    with torch.no_grad():
        proj.linear1.weight.copy_(torch.eye(4))      # 4 = 2 frames x 2 dims: identity
        proj.linear1.bias.zero_()
        proj.linear2.weight.copy_(torch.tensor([[1., 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, -1]]))
        proj.linear2.bias.copy_(torch.tensor([0., 0, 10]))
    # 5 frames of width 2: frame t = (t, -t); 5 mod 2 = 1 trailing frame dropped.
    frames = torch.tensor([[[0., 0], [1, -1], [2, -2], [3, -3], [4, -4]]])
    out, lengths = proj(frames, torch.tensor([5]))
    # group 0 = (0,0,1,-1) -> relu (0,0,1,0); group 1 = (2,-2,3,-3) -> relu (2,0,3,0)
    assert torch.equal(out, torch.tensor([[[0., 1, 10], [2, 3, 10]]]))
    assert lengths.tolist() == [2]


def test_upsample_uniform_assignment_hand_worked():
    # 2 states, lambda 3 -> each repeated 3 times
    assert upsample_assignment(torch.tensor([2]), torch.tensor([6]), 6).tolist() == [[0, 0, 0, 1, 1, 1]]
    # 7 targets > 6: stretched, t takes floor(t*2/7)
    assert upsample_assignment(torch.tensor([2]), torch.tensor([7]), 7).tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    llm_cfg = LlamaConfig(hidden_size=4, num_attention_heads=1, num_key_value_heads=1)
    gen = CTCSpeechGenerator(llm_cfg, "(1,8,2,16)", upsample_factor=3, unit_vocab_size=5)
    states = torch.tensor([[[1., 1, 1, 1], [2, 2, 2, 2], [0, 0, 0, 0]],
                           [[5., 5, 5, 5], [0, 0, 0, 0], [0, 0, 0, 0]]])
    x, n_out = gen.upsample(states, torch.tensor([2, 1]), torch.tensor([7, 2]))
    assert n_out.tolist() == [7, 3]
    assert x[0, :, 0].tolist() == [1, 1, 1, 1, 2, 2, 2]
    assert x[1, :, 0].tolist() == [5, 5, 5, 0, 0, 0, 0]      # padding zeroed


def test_ctc_collapse_merges_repeats_then_drops_blanks():
    assert ctc_collapse([3, 3, 9, 3, 9, 9, 4, 4], blank=9) == [3, 3, 4]
    assert ctc_collapse([9, 9], blank=9) == []


def test_ctc_loss_equals_direct_ctc_loss():
    torch.manual_seed(0)
    llm_cfg = LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=2)
    gen = CTCSpeechGenerator(llm_cfg, "(2,16,2,32)", upsample_factor=4, unit_vocab_size=10)
    states = torch.randn(2, 5, 16)
    n_states = torch.tensor([5, 3])
    units = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, -100, -100, -100]])
    loss_sum, n_units = gen.ctc_loss_sum(states, n_states, units)
    # direct: logits from the module's forward, CTC by hand per sample
    logits, n_out = gen(states, n_states, torch.tensor([6, 3]))
    assert n_out.tolist() == [20, 12]
    total = 0.0
    for b, (L, tgt) in enumerate([(20, [1, 2, 3, 4, 5, 6]), (12, [7, 8, 9])]):
        lp = torch.log_softmax(logits[b, :L].float(), -1)[:, None]
        total += torch.nn.functional.ctc_loss(lp, torch.tensor([tgt]), torch.tensor([L]),
                                              torch.tensor([len(tgt)]), blank=10, reduction="sum")
    assert n_units.item() == 9
    torch.testing.assert_close(loss_sum, total, rtol=1e-6, atol=1e-5)


def test_decoder_attention_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    llm_cfg = LlamaConfig(hidden_size=8, num_attention_heads=2, num_key_value_heads=2)
    gen = CTCSpeechGenerator(llm_cfg, "(2,16,2,32)", upsample_factor=2, unit_vocab_size=7).eval()
    states = torch.randn(1, 4, 8)
    full, _ = gen(states, torch.tensor([4]))
    prefix, _ = gen(states[:, :2], torch.tensor([2]))
    torch.testing.assert_close(full[:, :4], prefix, rtol=1e-5, atol=1e-5)   # causal
    # the same 2 states padded to 4 beside a different row: padding never leaks in
    padded = torch.cat([states[:, :2], torch.zeros(1, 2, 8)], 1)
    batch = torch.cat([padded, torch.randn(1, 4, 8)])
    batched, n_out = gen(batch, torch.tensor([2, 4]))
    assert n_out.tolist() == [4, 8]
    torch.testing.assert_close(batched[0, :4], prefix[0], rtol=1e-5, atol=1e-5)
