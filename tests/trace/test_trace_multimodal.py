"""TRACE with a vision-language model: the tiny Qwen2-VL, image columns, the loss by hand, GradCache, the frozen
vision tower, routing on image queries, save/reload with images, and 2-process training with images."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from trl_mars.embed.encoder import TraceEncoder
from trl_mars.embed.export import export_sentence_transformers
from trl_mars.losses.trace import IGNORE_INDEX
from trl_mars.trainers.trace_trainer import TraceEmbedTrainer


@pytest.fixture
def image_dataset(image_rows) -> Dataset:
    return Dataset.from_list(image_rows)


@pytest.fixture
def vlm_trainer(trace_vlm_path, trace_args, image_dataset):
    def make(**overrides):
        peft_config = overrides.pop("peft_config", None)
        args = trace_args(**overrides)
        return TraceEmbedTrainer(trace_vlm_path, args=args, train_dataset=image_dataset, peft_config=peft_config)

    return make


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_tiny_vlm_loads_by_path_with_its_image_processor(tiny_cache, arch):
    from trace_image_rows import two_colour_image

    from trl_mars.testing import tiny_vlm_path

    path = tiny_vlm_path(arch, cache_dir=tiny_cache)
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == {"qwen2_vl": "Qwen2VLForConditionalGeneration"}.get(
        arch, "Qwen2_5_VLForConditionalGeneration"
    )
    assert sum(p.numel() for p in model.parameters()) < 300_000
    tokenizer, processor = AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
    for name in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert getattr(model.config, name) < len(tokenizer)
    assert tokenizer.convert_ids_to_tokens(model.config.image_token_id) == "<|image_pad|>"
    out = processor(images=[two_colour_image("red", "blue")], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 4]] and out["pixel_values"].shape == (16, 1176)
    ids = tokenizer("<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>red", return_tensors="pt")["input_ids"]
    logits = model(
        input_ids=ids,
        pixel_values=out["pixel_values"],
        image_grid_thw=out["image_grid_thw"],
        mm_token_type_ids=(ids == model.config.image_token_id).long(),
    ).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()


def test_collator_puts_the_image_tokens_before_the_text(vlm_trainer, image_rows):
    trainer = vlm_trainer()
    tok, collator, vision = trainer.processing_class, trainer.data_collator, trainer.vision
    batch = collator(image_rows[:6])
    image = "<|vision_start|>" + "<|image_pad|>" * 4 + "<|vision_end|>"
    parts = collator.query_parts
    for i, row in enumerate(image_rows[:6]):
        ids = [t for t, m in zip(batch["query_input_ids"][i].tolist(), batch["query_attention_mask"][i]) if m]
        shown = image if row["query_image"] is not None else ""
        target = row["query_target"] + "<|emb|>"
        assert tok.decode(ids) == parts.prefix + shown + row["query"] + parts.suffix + target, i
        mm = batch["query_mm_token_type_ids"][i][-len(ids) :].tolist()
        assert mm == [int(t == vision.image_token_id) for t in ids]
    # rows 0, 1, 3, 4 have query images (kind 2 is text-only): 4 grids of 1x4x4 patches
    assert batch["query_num_patches"].tolist() == [16, 16, 0, 16, 16, 0]
    assert batch["query_image_grid_thw"].tolist() == [[1, 4, 4]] * 4 and batch["query_pixel_values"].shape[0] == 64
    assert batch["candidate_num_patches"].tolist() == [16] * 6
    assert batch["negative_num_patches"].tolist() == [0, 16, 0, 16, 0, 16]
    # an image-only candidate is [prefix; image; suffix; <|emb|>]
    cand = [t for t, m in zip(batch["candidate_input_ids"][0].tolist(), batch["candidate_attention_mask"][0]) if m]
    assert tok.decode(cand) == collator.candidate_parts.prefix + image + collator.candidate_parts.suffix + "<|emb|>"
    # text-only rows give exactly the ids of the text collator
    text_only = collator([{k: v for k, v in image_rows[2].items() if not k.endswith("_image")}])
    assert "query_pixel_values" not in text_only
    assert text_only["query_input_ids"][0].tolist() == ids_of(batch, "query", 2)


def ids_of(batch, prefix: str, row: int) -> list[int]:
    ids, mask = batch[f"{prefix}_input_ids"][row], batch[f"{prefix}_attention_mask"][row]
    return ids[mask.bool()].tolist()


def test_collator_rejects_an_image_that_max_length_cuts(vlm_trainer, image_rows):
    trainer = vlm_trainer()
    collator = trainer.data_collator
    prefix = len(trainer.processing_class(collator.query_parts.prefix, add_special_tokens=False)["input_ids"])
    # room for the prefix, <|vision_start|> and 2 of the 4 image tokens, the suffix and <|emb|>
    collator.max_length = prefix + 3 + len(collator.query_parts.suffix_ids) + 1
    with pytest.raises(ValueError, match="query row 0: 2 image tokens in the prompt, expected 4"):
        trainer.data_collator(image_rows[:2])
    collator.max_length = 128
    with pytest.raises(FileNotFoundError, match="query_image 1: image file '/no/such.png' does not exist"):
        collator([image_rows[0], {**image_rows[1], "query_image": "/no/such.png"}])
    with pytest.raises(TypeError, match="positive_image"):
        collator([{**image_rows[0], "positive_image": 3}])


def _row_forward(model, tokenizer, vision, ids: list[int], image):
    """One unpadded row through the model, its image processed on its own (LLaVA: its pixels only; Qwen2-VL: also
    its patch grid and the M-RoPE token types). The model itself checks that the row has as many image tokens as
    the vision tower gives features."""
    input_ids = torch.tensor([ids])
    kwargs = {}
    if image is not None:
        out = vision.image_processor(images=[image], return_tensors="pt")
        kwargs = {"pixel_values": out["pixel_values"]}
        if model.config.model_type == "qwen2_vl":
            kwargs["image_grid_thw"] = out["image_grid_thw"]
            kwargs["mm_token_type_ids"] = (input_ids == vision.image_token_id).long()
    return model(input_ids=input_ids, output_hidden_states=True, **kwargs)


@pytest.mark.parametrize("arch", ["qwen2_vl", "llava"])
def test_multimodal_loss_equals_the_hand_assembled_loss(request, arch, trace_args, image_dataset, image_rows):
    """compute_loss on a mixed batch == per-row unpadded forwards: CE on CoT + <|emb|>, pre-<|emb|> pooling,
    cosine InfoNCE over positives and hard negatives, lambda-weighted; for both wired VLM families."""
    path = request.getfixturevalue({"qwen2_vl": "trace_vlm_path", "llava": "trace_llava_path"}[arch])
    args = trace_args(lambda_gen=0.7, lambda_ret=1.3, temperature=0.1)
    trainer = TraceEmbedTrainer(path, args=args, train_dataset=image_dataset)
    assert trainer.model.config.model_type == arch
    model, tok, vision = trainer.model.eval(), trainer.processing_class, trainer.vision
    rows = image_rows[:8]
    batch = trainer.data_collator(rows)
    emb = trainer.emb_token_id
    ce_sum, n_tokens, queries, candidates, negatives = 0.0, 0, [], [], []
    with torch.no_grad():
        for i, row in enumerate(rows):
            ids = ids_of(batch, "query", i)
            out = _row_forward(model, tok, vision, ids, row["query_image"])
            labels = [t for t in batch["query_labels"][i].tolist() if t != IGNORE_INDEX]
            start = len(ids) - len(labels)
            logp = out.logits[0].log_softmax(-1)
            ce_sum -= sum(logp[start + j - 1, t] for j, t in enumerate(labels))
            n_tokens += len(labels)
            queries.append(out.hidden_states[-1][0, len(ids) - 2])  # the state before the final <|emb|>
            for prefix, store, image in (
                ("candidate", candidates, row["positive_image"]),
                ("negative", negatives, row["negative_image"]),
            ):
                c_ids = ids_of(batch, prefix, i)
                assert c_ids[-1] == emb
                store.append(_row_forward(model, tok, vision, c_ids, image).hidden_states[-1][0, -2])
        q, pool = F.normalize(torch.stack(queries), dim=-1), F.normalize(torch.stack(candidates + negatives), dim=-1)
        logits = q @ pool.T / 0.1
        ret = -(logits.diag()[:8] - logits.logsumexp(-1)).mean()
        expected = 1.3 * ret + 0.7 * ce_sum / n_tokens
        loss = trainer.compute_loss(model, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_grad_cache_with_images_matches_the_direct_loss_and_gradient(vlm_trainer, image_rows):
    """Chunks of 3 cut across image and text rows; the vision tower (trainable here) runs in the replay."""
    trainer = vlm_trainer(freeze_vision_tower=False)
    trainer.model.train()
    batch = trainer.data_collator(image_rows[:8])
    direct_loss, direct = _grads(trainer, batch)
    trainer.args.mini_batch_size = 3
    cached_loss, cached = _grads(trainer, batch)
    assert cached_loss == pytest.approx(direct_loss, rel=1e-5)
    assert direct.keys() == cached.keys()
    assert "model.visual.patch_embed.proj.weight" in direct and "model.visual.merger.mlp.0.weight" in direct
    assert direct["model.visual.patch_embed.proj.weight"].abs().max() > 0
    for name in direct:
        torch.testing.assert_close(cached[name], direct[name], atol=1e-5, rtol=1e-4, msg=name)


def test_freeze_vision_tower_freezes_the_encoder_and_keeps_the_projector(vlm_trainer):
    from peft import LoraConfig

    def trainable(trainer):
        return {n for n, p in trainer.model.named_parameters() if p.requires_grad}

    frozen = vlm_trainer(max_steps=2)
    names = {n for n, _ in frozen.model.named_parameters()}
    encoder = {n for n in names if n.startswith("model.visual.") and ".merger." not in n}
    assert encoder and "model.visual.patch_embed.proj.weight" in encoder
    assert trainable(frozen) == names - encoder
    patch = frozen.model.get_parameter("model.visual.patch_embed.proj.weight").detach().clone()
    merger = frozen.model.get_parameter("model.visual.merger.mlp.0.weight").detach().clone()
    frozen.train()
    assert torch.equal(frozen.model.get_parameter("model.visual.patch_embed.proj.weight"), patch)
    assert not torch.equal(frozen.model.get_parameter("model.visual.merger.mlp.0.weight"), merger)
    assert trainable(vlm_trainer(freeze_vision_tower=False)) == names

    for freeze in (True, False):
        lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = vlm_trainer(peft_config=lora, freeze_vision_tower=freeze)
        adapted = {n for n in trainable(trainer) if "lora_A" in n}
        vision_blocks = {n for n in adapted if ".visual.blocks." in n}
        assert any(".language_model." in n for n in adapted) and any(".visual.merger." in n for n in adapted)
        assert bool(vision_blocks) is (not freeze), (freeze, sorted(vision_blocks)[:3])


def test_qwen2_5_vl_trains_with_lora_kept_off_its_vision_mlp(tiny_cache, trace_args, image_dataset):
    """Qwen2.5-VL's vision MLP is named like the language model's (gate/up/down_proj): a LoRA target list hits
    it unless the vision encoder is excluded."""
    from peft import LoraConfig

    from trl_mars.testing import tiny_vlm_path

    path = tiny_vlm_path("qwen2_5_vl", cache_dir=tiny_cache)
    targets = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
    for freeze in (True, False):
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
        args = trace_args(max_steps=1, freeze_vision_tower=freeze)
        trainer = TraceEmbedTrainer(path, args=args, train_dataset=image_dataset, peft_config=lora)
        adapted = [n for n, p in trainer.model.named_parameters() if "lora_A" in n]
        in_vision = [n for n in adapted if ".visual." in n]
        assert any(".language_model." in n for n in adapted)
        assert bool(in_vision) is (not freeze), in_vision[:3]
    trainer.train()
    assert torch.isfinite(torch.tensor(trainer.state.log_history[0]["loss"]))


def test_image_max_pixels_resizes_the_images_and_is_saved(vlm_trainer, image_rows, tmp_path):
    """784 pixels = one 28x28 merged token per image (4 without the cap)."""
    trainer = vlm_trainer(image_max_pixels=28 * 28, output_dir=str(tmp_path / "small"))
    batch = trainer.data_collator(image_rows[:2])
    assert batch["query_image_grid_thw"].tolist() == [[1, 2, 2]] * 2
    assert (batch["query_mm_token_type_ids"].sum(dim=1) == 1).all()
    trainer.save_model(str(tmp_path / "small"))
    encoder = TraceEncoder.from_pretrained(tmp_path / "small")
    assert encoder.vision.process([image_rows[0]["query_image"]]).num_tokens == [1]


def test_no_duplicates_batches_compare_candidates_by_text_and_image(trace_vlm_path, trace_args):
    """Image-only positives all have the empty text: duplicates are told apart (and found) by their pixels."""
    from trace_image_rows import COLOURS, two_colour_image

    names = list(COLOURS)
    rows = [
        {
            "query": f"the {names[i % 4]} left half",
            "positive": "",
            "positive_image": two_colour_image(names[i % 4], "red"),
        }
        for i in range(8)
    ]
    args = trace_args(per_device_train_batch_size=4)
    trainer = TraceEmbedTrainer(trace_vlm_path, args=args, train_dataset=Dataset.from_list(rows))
    batches = list(trainer.get_train_dataloader().batch_sampler)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert [len(b) for b in batches] == [4, 4]  # equal empty texts alone would not count as duplicates
    for batch in batches:  # rows i and i + 4 share an image
        assert len({i % 4 for i in batch}) == len(batch), batch


def test_image_columns_need_a_vision_model(trace_model_path, trace_args, image_dataset, image_rows):
    with pytest.raises(ValueError, match=r"image columns \['negative_image', 'positive_image', 'query_image'\]"):
        TraceEmbedTrainer(trace_model_path, args=trace_args(), train_dataset=image_dataset)
    text_rows = Dataset.from_list([{"query": r["query"], "positive": r["negative"]} for r in image_rows])
    with pytest.raises(ValueError, match="image_max_pixels is set but the model .* has no image processor"):
        TraceEmbedTrainer(trace_model_path, args=trace_args(image_max_pixels=784), train_dataset=text_rows)


def test_a_vlm_trains_on_text_only_rows(trace_vlm_path, trace_args, image_rows):
    rows = [{k: v for k, v in r.items() if not k.endswith("_image") and k != "negative"} for r in image_rows]
    for row in rows:
        row["positive"] = row["positive"] or row["query"] or "a photo"
    trainer = TraceEmbedTrainer(trace_vlm_path, args=trace_args(max_steps=2), train_dataset=Dataset.from_list(rows))
    trainer.train()
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_routing_on_image_queries(trace_vlm_path, trace_args):
    """Image-only queries always reason, text queries never: the first-token route learns the split, and routed
    mode is per query exactly direct (no reasoning) or cot."""
    from trace_image_rows import COLOURS, two_colour_image

    names = list(COLOURS)
    rows = []
    for i in range(32):
        left, right = names[i % 4], names[(i // 4) % 4]
        image_query = i % 2 == 0
        rows.append(
            {
                "query": "" if image_query else f"{left} left {right} right",
                "query_image": two_colour_image(left, right) if image_query else None,
                "query_target": f"{left} left of {right}" if image_query else "",
                "positive": f"a photo of {left} and {right}",
            }
        )
    args = trace_args(max_steps=30, learning_rate=1e-2, lambda_ret=0.1, per_device_train_batch_size=16)
    trainer = TraceEmbedTrainer(trace_vlm_path, args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    encoder = trainer.encoder()
    encoder.model.eval()
    texts, images = [r["query"] for r in rows[:8]], [r["query_image"] for r in rows[:8]]
    routed = encoder.encode_with_details(texts, images, mode="routed", batch_size=3)
    assert routed.reasoned == [True, False] * 4
    direct = encoder.encode_with_details(texts, images, mode="direct", batch_size=3)
    cot = encoder.encode_with_details(texts, images, mode="cot", batch_size=3)
    assert direct.reasoned == [False] * 8 and cot.reasoned == [True] * 8
    for i, reasoned in enumerate(routed.reasoned):
        expected = cot if reasoned else direct
        torch.testing.assert_close(routed.embeddings[i], expected.embeddings[i], atol=1e-5, rtol=1e-4)
        assert routed.reasoning[i] == (cot.reasoning[i] if reasoned else "")
    # the image query's CoT names the colours it was trained to describe
    assert routed.reasoning[0].strip().startswith("red left")
    # direct mode is the training-time pre-<|emb|> pooling of [prompt; image; <|emb|>]
    batch = trainer.data_collator([{**rows[0], "query_target": ""}])
    with torch.no_grad():
        loss_q = trainer._query_forward(encoder.model, batch, slice(None))[0]
    torch.testing.assert_close(loss_q[0], direct.embeddings[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_saved_vlm_reloads_and_encodes_with_images(vlm_trainer, image_rows, tmp_path, lora):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
    out = tmp_path / "saved"
    trainer = vlm_trainer(max_steps=2, output_dir=str(out), peft_config=peft_config)
    trainer.train()
    trainer.save_model(str(out))
    assert (out / "preprocessor_config.json").exists()
    reloaded = TraceEncoder.from_pretrained(out)
    live = trainer.encoder()
    live.model.eval()
    assert reloaded.vision is not None and reloaded.vision.image_token_id == live.vision.image_token_id
    texts, images = [r["query"] for r in image_rows[:4]], [r["query_image"] for r in image_rows[:4]]
    for kind, mode in (("query", "routed"), ("query", "cot"), ("candidate", "direct")):
        got = reloaded.encode_with_details(texts, images, kind=kind, mode=mode)
        want = live.encode_with_details(texts, images, kind=kind, mode=mode)
        assert got.reasoned == want.reasoned and got.reasoning == want.reasoning
        torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-5, rtol=1e-4)
    # an image changes the embedding; no images is the text path
    with_image = reloaded.encode(["the red left half"], [image_rows[1]["query_image"]], mode="direct")
    without = reloaded.encode(["the red left half"], mode="direct")
    assert not torch.allclose(with_image, without)
    torch.testing.assert_close(reloaded.encode(["the red left half"], [None], mode="direct"), without)
    with pytest.raises(ValueError, match="2 texts but 1 images"):
        reloaded.encode(["a", "b"], [None])
    with pytest.raises(ValueError, match="text-only TRACE models; this one is a vision-language model"):
        export_sentence_transformers(reloaded, tmp_path / "st")
    if lora:  # an adapter folder without the image processor falls back to the base model's
        (out / "preprocessor_config.json").unlink()
        again = TraceEncoder.from_pretrained(out)
        torch.testing.assert_close(
            again.encode(texts, images, mode="direct"), reloaded.encode(texts, images, mode="direct")
        )


def _load_worker():
    spec = importlib.util.spec_from_file_location(
        "trace_ddp_worker", Path(__file__).with_name("ddp_trainer_worker.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.distributed
def test_ddp_step_with_images_equals_the_single_process_step(trace_vlm_path, tmp_path):
    """torchrun, 2 ranks x 4 image rows (GradCache chunks of 3) == 1 process x 8 rows: same loss, same update,
    the vision projector included."""
    (tmp_path / "single").mkdir()
    single = _load_worker().run_one_step(trace_vlm_path, tmp_path / "single", 0, images=True)
    script = Path(__file__).with_name("ddp_trainer_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*cmd, trace_vlm_path, str(tmp_path), "3", "images"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ddp = torch.load(tmp_path / "result.pt")
    assert (single["world"], ddp["world"]) == (1, 2)
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert single["delta"].keys() == ddp["delta"].keys()
    assert single["delta"]["model.visual.merger.mlp.0.weight"].abs().max() > 0
    assert not single["delta"]["model.visual.patch_embed.proj.weight"].any()  # frozen by default
    for name, delta in single["delta"].items():
        torch.testing.assert_close(ddp["delta"][name], delta, atol=1e-5, rtol=1e-3, msg=name)


@pytest.mark.distributed
def test_ddp_grad_cache_with_gradient_checkpointing_and_images(trace_vlm_path, tmp_path):
    """torchrun, 2 ranks, the real-scale recipe's combination on the tiny VLM: GradCache + gradient checkpointing +
    L_gen + images, frozen vision encoder, unused-parameter detection on (the VLM default): 2 steps, the same losses
    and bit-identical parameters on both ranks, the projector trained."""
    from safetensors.torch import load_file

    script = Path(__file__).with_name("ddp_checkpointing_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [*cmd, trace_vlm_path, str(tmp_path), "images"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(ranks[0]["losses"]) == 2 and ranks[0]["losses"] == ranks[1]["losses"]
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    initial = load_file(Path(trace_vlm_path) / "model.safetensors")
    for name, trained in (("merger.mlp.0.weight", True), ("patch_embed.proj.weight", False)):
        saved = initial[f"visual.{name}"]  # the checkpoint's (legacy) key of model.visual.<name>
        assert torch.equal(ranks[0]["params"][f"model.visual.{name}"], saved) is not trained, name
