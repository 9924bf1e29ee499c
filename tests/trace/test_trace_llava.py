"""TRACE with the second wired VLM family, LLaVA (CLIP vision tower + Llama, ``<image>`` repeated per image): the
processor's token rule, GradCache with images, the frozen vision tower, save/reload with images, and the clear
error for a VLM family that is not wired (PaliGemma). The hand-assembled loss is in test_trace_multimodal.py
(parametrised over both families)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer, LlavaConfig

from trl_mars.embed.encoder import TraceEncoder
from trl_mars.embed.vision import FAMILIES, VisionSpec, vision_family
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer

PATCH = "model.vision_tower.embeddings.patch_embedding.weight"
PROJECTOR = "model.multi_modal_projector.linear_1.weight"


@pytest.fixture
def llava_trainer(trace_llava_path, trace_args, image_rows):
    def make(**overrides):
        peft_config = overrides.pop("peft_config", None)
        rows = Dataset.from_list(image_rows)
        return TraceEmbedTrainer(
            trace_llava_path, args=trace_args(**overrides), train_dataset=rows, peft_config=peft_config
        )

    return make


def test_tiny_llava_follows_the_llava_processor_token_rule(trace_llava_path):
    """56x56 images, 28-pixel patches: (56/28)^2 = 4 patch features + 1 CLIP class token - 1 (strategy "default"
    drops it) = 4 ``<image>`` tokens, one ``pixel_values`` row per image; the model accepts exactly that count."""
    from trace_image_rows import two_colour_image

    model = AutoModelForImageTextToText.from_pretrained(trace_llava_path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) < 300_000
    tokenizer, processor = (
        AutoTokenizer.from_pretrained(trace_llava_path),
        AutoImageProcessor.from_pretrained(trace_llava_path),
    )
    vision = VisionSpec.from_model(model.config, tokenizer, processor)
    assert vision.family is FAMILIES["llava"] and vision.image_token == "<image>"
    batch = vision.process([two_colour_image("red", "blue"), None, two_colour_image("green", "red")])
    assert batch.num_tokens == [4, 0, 4] and batch.num_patches == [1, 0, 1]
    assert batch.pixel_values.shape == (2, 3, 56, 56) and set(batch.tensors) == {"pixel_values"}
    assert vision.placeholder(4) == "<image>" * 4  # no start/end tokens around LLaVA's image tokens
    ids = tokenizer(vision.placeholder(4) + "red", return_tensors="pt")["input_ids"]
    inputs = batch.model_inputs(ids, vision.image_token_id)
    assert set(inputs) == {"pixel_values"}  # no mm_token_type_ids: LLaVA has no M-RoPE
    logits = model(input_ids=ids, pixel_values=inputs["pixel_values"][:1]).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    with pytest.raises(ValueError, match="[Ii]mage features and image tokens do not match"):
        model(input_ids=ids[:, 1:], pixel_values=inputs["pixel_values"][:1])  # one image token short
    # the rule's other terms: strategy "full" keeps the class token
    model.config.vision_feature_select_strategy = "full"
    assert vision.process([two_colour_image("red", "blue")]).num_tokens == [5]
    # LLaVA-1.5's defaults (CLIP ViT-L/14 at 336 px): (336/14)^2 = 576 image tokens
    default = LlavaConfig()
    assert (default.vision_config.image_size, default.vision_config.patch_size) == (336, 14)
    assert FAMILIES["llava"].counts({"pixel_values": torch.zeros(2, 3, 336, 336)}, None, default) == (
        [1, 1],
        [576] * 2,
    )


def _grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_llava_grad_cache_with_images_matches_the_direct_loss_and_gradient(llava_trainer, image_rows):
    """Chunks of 3 cut across image and text rows (pixel_values sliced per image); the CLIP tower (trainable here)
    runs in the replayed forward."""
    trainer = llava_trainer(freeze_vision_tower=False)
    trainer.model.train()
    batch = trainer.data_collator(image_rows[:8])
    assert batch["query_num_patches"].tolist() == [1, 1, 0, 1, 1, 0, 1, 1]
    direct_loss, direct = _grads(trainer, batch)
    trainer.args.mini_batch_size = 3
    cached_loss, cached = _grads(trainer, batch)
    assert cached_loss == pytest.approx(direct_loss, rel=1e-5)
    assert direct.keys() == cached.keys() and {PATCH, PROJECTOR} <= direct.keys()
    assert direct[PATCH].abs().max() > 0
    for name in direct:
        torch.testing.assert_close(cached[name], direct[name], atol=1e-5, rtol=1e-4, msg=name)


def test_llava_freeze_vision_tower_freezes_clip_and_keeps_the_projector(llava_trainer):
    from peft import LoraConfig

    def trainable(trainer):
        return {n for n, p in trainer.model.named_parameters() if p.requires_grad}

    frozen = llava_trainer(max_steps=2)
    names = {n for n, _ in frozen.model.named_parameters()}
    encoder = {n for n in names if n.startswith("model.vision_tower.")}
    assert PATCH in encoder and PROJECTOR not in encoder
    assert trainable(frozen) == names - encoder
    patch, projector = (frozen.model.get_parameter(n).detach().clone() for n in (PATCH, PROJECTOR))
    frozen.train()
    assert torch.equal(frozen.model.get_parameter(PATCH), patch)
    assert not torch.equal(frozen.model.get_parameter(PROJECTOR), projector)
    assert trainable(llava_trainer(freeze_vision_tower=False)) == names

    for freeze in (True, False):
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = llava_trainer(peft_config=lora, freeze_vision_tower=freeze)
        adapted = {n for n in trainable(trainer) if "lora_A" in n}
        in_tower = {n for n in adapted if ".vision_tower." in n}
        assert any(".language_model." in n for n in adapted) and any(".multi_modal_projector." in n for n in adapted)
        assert bool(in_tower) is (not freeze), (freeze, sorted(in_tower)[:3])


def test_llava_rejects_image_max_pixels(llava_trainer):
    with pytest.raises(ValueError, match="image_max_pixels is set but llava models take images at the fixed"):
        llava_trainer(image_max_pixels=28 * 28)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_saved_llava_reloads_and_encodes_with_images(llava_trainer, image_rows, tmp_path, lora):
    """TraceEncoder.from_pretrained on the saved folder == the live encoder, in every mode (cot/routed: generate
    with pixel_values), and an image changes the embedding."""
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
    out = tmp_path / "saved"
    trainer = llava_trainer(max_steps=2, output_dir=str(out), peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(out))
    reloaded = TraceEncoder.from_pretrained(out)
    live = trainer.encoder()
    live.model.eval()
    assert reloaded.vision.family is FAMILIES["llava"]
    texts, images = [r["query"] for r in image_rows[:4]], [r["query_image"] for r in image_rows[:4]]
    for kind, mode in (("query", "routed"), ("query", "cot"), ("candidate", "direct")):
        got = reloaded.encode_with_details(texts, images, kind=kind, mode=mode)
        want = live.encode_with_details(texts, images, kind=kind, mode=mode)
        assert got.reasoned == want.reasoned and got.reasoning == want.reasoning
        torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-5, rtol=1e-4)
    with_image = reloaded.encode(["the red left half"], [image_rows[1]["query_image"]], mode="direct")
    without = reloaded.encode(["the red left half"], mode="direct")
    assert not torch.allclose(with_image, without)


def test_an_unwired_vlm_family_is_rejected_by_name(tmp_path, trace_args, image_rows):
    """PaliGemma (SigLIP + Gemma) is a vision-language model of no wired family: the trainer refuses it before
    training, naming the model type and the supported ones."""
    from trace_image_rows import WORDS
    from transformers import PaliGemmaConfig

    from trl_mars.testing import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer([WORDS] * 20, vocab_size=300)
    config = PaliGemmaConfig(
        text_config=dict(
            model_type="gemma",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        projection_dim=32,
        image_token_index=len(tokenizer) - 1,
    )
    AutoModelForImageTextToText.from_config(config).save_pretrained(tmp_path / "paligemma")
    tokenizer.save_pretrained(tmp_path / "paligemma")
    expected = (
        r"vision-language model type 'paligemma' .* not supported .* supported: \['llava', 'qwen2_5_vl', 'qwen2_vl'\]"
    )
    with pytest.raises(ValueError, match=expected):
        vision_family(config)
    with pytest.raises(ValueError, match=expected):
        TraceEmbedTrainer(str(tmp_path / "paligemma"), args=trace_args(), train_dataset=Dataset.from_list(image_rows))
