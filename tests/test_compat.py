"""The seed's config dicts (run_config) and API (csd & co.) on tiny stand-ins of its models."""

import pytest
import seedfixtures as sf
import torch
import tiny

import csdlib
from csdlib.compat import (CSDraftingEncoderDecoderModel, csd, get_mag_model,
                           run_config)
from csdlib.errors import CSDValueError


@pytest.fixture(scope="module")
def seed_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    return sf.write_models(root), sf.write_bigram(root / "bigram.json"), sf.write_data(root / "data")


@pytest.mark.parametrize("config, n_items", [(sf.FLAN_T5_PARAMS, 2), (sf.FLAN_T5_PREVIOUS, 2),
                                             (sf.LLAMA, 2), (sf.LLAMA_GSM8K, 2)])
def test_seed_configs_run(seed_world, config, n_items, tmp_path):
    paths, bigram, data = seed_world
    df = run_config(config, model_paths=paths, bigram_path=bigram, data_dir=data, n_samples=n_items,
                    out=tmp_path / "r.jsonl", max_new_tokens=12, progress=False, dtype=torch.float64)
    assert sorted(df["method"].unique()) == ["AR", "CSD"]
    assert len(df) == 2 * n_items
    assert df["equals_ar"].all()
    csd_rows = df[df.method == "CSD"]
    assert csd_rows.iloc[0]["models"] == [config["target_name"], *config["draft_names"], "mag"]
    assert csd_rows.iloc[0]["k_matrix"] == config["k_matrix"]
    assert (df["swi"] == df[f"swi.{config['counter_version']}"]).all()
    assert (df[df.method == "AR"]["swi"] == 1.0).all()
    expected_xxl = 11300 if config["counter_version"] == "model_parameters" else 1
    if not config["is_decoder_only"]:
        assert (csd_rows["c_target.model_parameters"] == 11300).all()
        assert (csd_rows[f"c_target.{config['counter_version']}"] == expected_xxl).all()
    else:
        assert (csd_rows["c_target.model_parameters"] == 7000).all()


def test_sampled_mmlu_is_a_fixed_seeded_subset(seed_world):
    _, _, data = seed_world
    a = csdlib.datasets.sampled_mmlu(n=3, data_dir=data)
    assert a == csdlib.datasets.sampled_mmlu(n=3, data_dir=data)
    assert len(a) == 3 and all(x in sf.MMLU_ITEMS for x in a)
    assert a != csdlib.datasets.sampled_mmlu(n=3, seed=1, data_dir=data)
    assert csdlib.datasets.sampled_mmlu(n=100, data_dir=data) == sf.MMLU_ITEMS


def test_mmlu_prompt_and_missing_dataset(tmp_path, monkeypatch):
    from csdlib.datasets import load_mmlu, mmlu_prompt

    item = sf.MMLU_ITEMS[0]
    assert mmlu_prompt(item) == ("Question: " + item["question"] + "\n(A) option a0 (B) option a1 (C) option a2 "
                                 "(D) option a3\n Answer: \n Let's think step by step. ")
    seed_schema = {"input": item["question"], "A": "option a0", "B": "option a1", "C": "option a2",
                   "D": "option a3", "target": "A"}
    assert mmlu_prompt(seed_schema) == mmlu_prompt(item)
    import datasets as hf_datasets

    monkeypatch.setattr(hf_datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(FileNotFoundError, match=r"mmlu/test.jsonl.*CSD_DATA_DIR"):
        load_mmlu("test", data_dir=tmp_path)


def test_config_errors(seed_world):
    paths, bigram, data = seed_world
    with pytest.raises(CSDValueError, match=r"unknown keys \['datset'\]"):
        run_config(dict(sf.LLAMA, datset="mmlu"), model_paths=paths)
    with pytest.raises(CSDValueError, match="bigram_path"):
        run_config(sf.LLAMA, model_paths=paths, data_dir=data)
    with pytest.raises(CSDValueError, match="counter_version"):
        run_config(dict(sf.LLAMA, counter_version="flops"), model_paths=paths)
    with pytest.raises(CSDValueError, match="model_paths"):
        run_config(dict(sf.LLAMA, target_name="/nonexistent/model"), model_paths=paths, bigram_path=bigram,
                   data_dir=data)


SNIPPET = '''
from csdlib.compat import csd                                            # changed import
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, AutoModelForCausalLM
from csdlib.compat import CSDraftingDecoderModel, get_mag_model          # changed import


draft_list = []
draft_names = ['JackFram/llama-160m']
for draft_name in draft_names:
    hf_model = AutoModelForCausalLM.from_pretrained(PATHS[draft_name])    # seed: Seq2Seq (a bug), hub name
    model = CSDraftingDecoderModel(hf_model, name=draft_name, counter_version=config['counter_version'])
    draft_list.append(model)

_BIGRAM_DIR = './bigram_models/'
bi_gram_path = _BIGRAM_DIR + 'wiki_bigram_naive_bayers_greedy_llama_next_token.json'
bi_gram_path = BIGRAM                                                    # our stand-in table
mag_model = get_mag_model(bi_gram_path, config['is_decoder_only'])
draft_list.append(mag_model)

LLAMA_HF_PATH = LLAMA_PATH + 'hf_7b_chat'
from transformers import LlamaForCausalLM, LlamaTokenizer

tokenizer = AutoTokenizer.from_pretrained(PATHS['llama_7b'])              # <your hugginface llama tokenizer>
hf_model = LlamaForCausalLM.from_pretrained(PATHS['llama_7b'])            # <your hugginface llama model>

target_model = CSDraftingDecoderModel(hf_model, name='llama', vocab_size=32000)
target_model.to(device)                                                  # seed: .cuda(device); no GPU here

question = 'Tom has 3 boxes with 4 pens in each box. How many pens does Tom have?'
initial_input = tokenizer(question, truncation=True, padding=False, return_tensors="pt")['input_ids'].to(target_model.device)
input_ids = initial_input
res = csd(draft_list, target_model, initial_input, input_ids, k_matrix, max_length=200)
generated_text = tokenizer.batch_decode(res, skip_special_tokens=True)
'''


def test_seed_inference_snippet(seed_world):
    paths, bigram, _ = seed_world
    scope = {"PATHS": paths, "BIGRAM": str(bigram), "config": sf.LLAMA, "LLAMA_PATH": "/unused/",
             "device": "cpu", "k_matrix": torch.tensor(sf.LLAMA["k_matrix"])}
    exec(SNIPPET, scope)
    res, target = scope["res"], scope["hf_model"]
    prompt = scope["initial_input"][0].tolist()
    expected = tiny.hf_greedy(target, prompt, 200, eos=1)[0].tolist()
    assert res[0].tolist() == expected
    assert scope["generated_text"] == scope["tokenizer"].batch_decode(torch.tensor([expected]), skip_special_tokens=True)


def test_seed_encoder_decoder_api(seed_world):
    from transformers import AutoModelForSeq2SeqLM

    paths, bigram, _ = seed_world
    target_hf = AutoModelForSeq2SeqLM.from_pretrained(paths["google/flan-t5-xxl"])
    target = CSDraftingEncoderDecoderModel(target_hf, name="google/flan-t5-xxl")
    drafts = [CSDraftingEncoderDecoderModel(AutoModelForSeq2SeqLM.from_pretrained(paths[n]), name=n)
              for n in ("google/flan-t5-base", "google/flan-t5-small")] + [get_mag_model(bigram, False)]
    prompt = torch.tensor([[5, 9, 30, 41, 7]])
    res = csd(drafts, target, prompt, torch.tensor([[0]]), sf.FLAN_T5_PARAMS["k_matrix"], max_length=20,
              leniency=2)
    assert res[0].tolist() == tiny.hf_greedy(target_hf, prompt[0].tolist(), 20, eos=1)[0].tolist()
    with pytest.raises(CSDValueError, match="decoder start"):
        csd(drafts, target, prompt, prompt, sf.FLAN_T5_PARAMS["k_matrix"])
    with pytest.raises(CSDValueError, match="use CSDraftingDecoderModel"):
        CSDraftingEncoderDecoderModel(tiny.llama(0), name="x")
    with pytest.raises(CSDValueError, match="sample"):
        CSDraftingEncoderDecoderModel(target_hf, sample=True)


def test_seed_config_command(seed_world, tmp_path, capsys):
    import json

    from csdlib.cli import main

    paths, bigram, data = seed_world
    config = tmp_path / "config.json"
    config.write_text(json.dumps(sf.LLAMA_GSM8K))
    args = ["seed-config", str(config), "--bigram", str(bigram), "--data-dir", str(data), "--n-samples", "2",
            "--max-new-tokens", "6", "--out", str(tmp_path / "r.jsonl")]
    for name, path in paths.items():
        args += ["--model-path", f"{name}={path}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = [line.split()[:2] for line in printed.splitlines()]
    assert ["AR", "2"] in rows and ["CSD", "2"] in rows
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 4
