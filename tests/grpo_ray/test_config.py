"""grpo_ray.config: defaults, normalisation, and every kind of invalid value rejected at
construction with a message naming the field and the fix."""

import dataclasses

import pytest

from grpo_ray.config import (
    SECTIONS,
    resource_dict,
    BatchConfig,
    ConfigError,
    GenerationConfig,
    GRPOConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TrainConfig,
)


def test_defaults_are_valid_and_frozen():
    config = TrainConfig()
    assert config.grpo.loss_type == "dapo" and config.grpo.beta == 0.0 and config.grpo.epsilon == 0.2
    assert config.batch.effective_batch_size // config.grpo.num_generations >= 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.grpo.beta = 0.1  # type: ignore[misc]


def test_every_field_has_help():
    for section, cls in SECTIONS.items():
        assert dataclasses.fields(TrainConfig)[list(SECTIONS).index(section)].name == section
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{section}.{f.name} has no help text"


# Knobs whose names come from TRL's GRPOConfig but whose defaults deliberately differ.
TRL_DEFAULT_EXCEPTIONS = {
    "per_device_train_batch_size",  # 16, so the default cycle holds 2 prompts (TRL: 8 = 1 prompt)
    "max_completion_length",  # 256 here, 512 in TRL 1.16
    "top_k",  # None (disabled) here; TRL spells disabled as 0
}


def test_grpo_knobs_keep_trl_defaults():
    import trl  # a dev dependency: missing, this check fails rather than skips

    theirs = {f.name: f for f in dataclasses.fields(trl.GRPOConfig)}
    checked = 0
    for cls in (GRPOConfig, GenerationConfig, BatchConfig):
        for f in dataclasses.fields(cls):
            if f.name in theirs and f.name not in TRL_DEFAULT_EXCEPTIONS:
                assert f.default == theirs[f.name].default, f.name
                checked += 1
    assert checked >= 15


def test_scale_rewards_bools_and_lists_are_normalised():
    assert GRPOConfig(scale_rewards=True).scale_rewards == "group"
    assert GRPOConfig(scale_rewards=False).scale_rewards == "none"
    assert GRPOConfig(reward_weights=[1, 0.5]).reward_weights == (1, 0.5)
    assert RewardConfig(functions=["a", "b"]).functions == ("a", "b")
    assert GRPOConfig(epsilon=0.2, epsilon_high=0.28).epsilon_high_value == 0.28
    assert GRPOConfig(epsilon=0.3).epsilon_high_value == 0.3
    assert BatchConfig(gradient_accumulation_steps=3).steps_per_generation_value == 3


def test_valid_edge_cases_are_accepted():
    GRPOConfig(delta=1.21)  # > 1 + epsilon = 1.2
    GRPOConfig(beta=0.0, vllm_importance_sampling_clip_max=1.0, max_prompt_length=None)
    # each TRL 1.16 objective with what it needs; the engine-correction bounds at their edges
    GRPOConfig(loss_type="cispo", epsilon_high=1.0)
    GRPOConfig(loss_type="luspo", importance_sampling_level="sequence", delta=1.3)
    GRPOConfig(loss_type="vespo", vllm_importance_sampling_mode="token_mask", vespo_k_pos=0.0)
    GRPOConfig(loss_type="vespo", vllm_importance_sampling_correction=False)  # no correction: any mode
    GRPOConfig(loss_type="sapo", importance_sampling_level="sequence", sapo_temperature_neg=0.5)
    GRPOConfig(vllm_importance_sampling_mode="token_truncate", vllm_importance_sampling_clip_min=0.0,
               vllm_importance_sampling_clip_max=None)
    GRPOConfig(vllm_importance_sampling_mode="sequence_mask", vllm_importance_sampling_clip_max=None)
    GRPOConfig(top_entropy_quantile=0.0, off_policy_mask_threshold=0.5, kl_estimator="k1", use_bias_correction_kl=False)
    # an entropy penalty; a static coefficient outside the adaptive bounds; adaptive control from 0 at the bounds
    GRPOConfig(entropy_coef=-0.01)
    GRPOConfig(entropy_coef=5.0)
    GRPOConfig(use_adaptive_entropy=True, entropy_coef=0.0, entropy_coef_max=0.0, entropy_target=0.0)
    # 2 unique prompts is the least GRPO accepts
    TrainConfig(batch=BatchConfig(per_device_train_batch_size=8, steps_per_generation=2), grpo=GRPOConfig(num_generations=8))
    # reward_weights are only checked against reward.functions when functions are named
    TrainConfig(grpo=GRPOConfig(reward_weights=(1.0, 2.0)))
    TrainConfig(grpo=GRPOConfig(reward_weights=(1.0, 2.0)), reward=RewardConfig(functions=("a", "b")))
    # checkpoints between cycles: every 4 steps with 2 per cycle; any step count when a step spans cycles
    TrainConfig(batch=BatchConfig(steps_per_generation=2), run=RunConfig(save_steps=4))
    TrainConfig(batch=BatchConfig(gradient_accumulation_steps=3, steps_per_generation=2), run=RunConfig(save_steps=1))
    # several learner ranks in distributed mode; custom resources per role
    TrainConfig(batch=BatchConfig(num_processes=2, learner_resources=("learner_node=1",)), run=RunConfig(mode="distributed"))
    assert resource_dict(RolloutConfig(resources=("a=1", "b=0.5")).resources) == {"a": 1.0, "b": 0.5}


def bad_batch(per_device, spg, g, procs=1):
    return lambda: TrainConfig(
        batch=BatchConfig(per_device_train_batch_size=per_device, steps_per_generation=spg, num_processes=procs),
        grpo=GRPOConfig(num_generations=g),
    )


# (what is wrong, how to build it, text the message must contain: the field and the fix)
BAD_CONFIGS = [
    ("negative epsilon", lambda: GRPOConfig(epsilon=-0.1), ["grpo.epsilon", "> 0"]),
    ("epsilon >= 1", lambda: GRPOConfig(epsilon=1.0), ["grpo.epsilon", "0 < epsilon < 1"]),
    ("nan epsilon_high", lambda: GRPOConfig(epsilon_high=float("nan")), ["grpo.epsilon_high", "finite"]),
    ("negative beta", lambda: GRPOConfig(beta=-0.01), ["grpo.beta", ">= 0"]),
    ("delta inside the clip range", lambda: GRPOConfig(epsilon_high=0.28, delta=1.2), ["grpo.delta", "delta > 1 + epsilon_high"]),
    ("unknown loss_type", lambda: GRPOConfig(loss_type="ppo"), ["grpo.loss_type", "'dapo'", "'dr_grpo'"]),
    ("unknown importance level", lambda: GRPOConfig(importance_sampling_level="seq"), ["grpo.importance_sampling_level", "'sequence'"]),
    ("unknown scale_rewards", lambda: GRPOConfig(scale_rewards="std"), ["grpo.scale_rewards", "'batch'"]),
    ("num_generations < 2", lambda: GRPOConfig(num_generations=1), ["grpo.num_generations", ">= 2"]),
    ("bool as int", lambda: GRPOConfig(num_generations=True), ["grpo.num_generations", "integer"]),
    ("num_iterations 0", lambda: GRPOConfig(num_iterations=0), ["grpo.num_iterations", ">= 1"]),
    ("empty reward_weights", lambda: GRPOConfig(reward_weights=()), ["grpo.reward_weights", "one weight per reward"]),
    ("non-finite reward weight", lambda: GRPOConfig(reward_weights=(1.0, float("inf"))), ["grpo.reward_weights", "finite"]),
    (
        "the removed TIS cap",
        lambda: GRPOConfig(vllm_importance_sampling_cap=2.0),
        ["grpo.vllm_importance_sampling_cap", "vllm_importance_sampling_clip_max", "token_truncate"],
    ),
    ("unknown IS mode", lambda: GRPOConfig(vllm_importance_sampling_mode="token"), ["grpo.vllm_importance_sampling_mode", "'sequence_mask'"]),
    ("IS C_max < 1", lambda: GRPOConfig(vllm_importance_sampling_clip_max=0.5), ["grpo.vllm_importance_sampling_clip_max", ">= 1"]),
    ("IS C_min > 1", lambda: GRPOConfig(vllm_importance_sampling_clip_min=1.5, vllm_importance_sampling_clip_max=None),
     ["grpo.vllm_importance_sampling_clip_min", "<= 1"]),
    ("IS C_min >= C_max", lambda: GRPOConfig(vllm_importance_sampling_clip_min=1.0, vllm_importance_sampling_clip_max=1.0),
     ["grpo.vllm_importance_sampling_clip_min", "below vllm_importance_sampling_clip_max"]),
    ("truncate without bounds", lambda: GRPOConfig(vllm_importance_sampling_mode="sequence_truncate", vllm_importance_sampling_clip_max=None),
     ["grpo.vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min"]),
    ("luspo at token level", lambda: GRPOConfig(loss_type="luspo"), ["grpo.importance_sampling_level", "'sequence'"]),
    ("vespo at sequence level", lambda: GRPOConfig(loss_type="vespo", importance_sampling_level="sequence",
     vllm_importance_sampling_mode="token_mask"), ["grpo.importance_sampling_level", "'token'"]),
    ("vespo with sequence engine correction", lambda: GRPOConfig(loss_type="vespo"),
     ["grpo.vllm_importance_sampling_mode", "'token_truncate'", "vllm_importance_sampling_correction=false"]),
    ("cispo without its cap", lambda: GRPOConfig(loss_type="cispo"), ["grpo.epsilon_high", ">= 1", "5.0"]),
    ("cispo with a cap < 1", lambda: GRPOConfig(loss_type="cispo", epsilon_high=0.28), ["grpo.epsilon_high", ">= 1"]),
    ("delta on sapo", lambda: GRPOConfig(loss_type="sapo", delta=2.0), ["grpo.delta", "'sapo'", "delta=None"]),
    ("sapo temperature 0", lambda: GRPOConfig(sapo_temperature_pos=0.0), ["grpo.sapo_temperature_pos", "> 0"]),
    ("negative vespo k", lambda: GRPOConfig(vespo_k_neg=-1.0), ["grpo.vespo_k_neg", ">= 0"]),
    ("entropy quantile > 1", lambda: GRPOConfig(top_entropy_quantile=1.5), ["grpo.top_entropy_quantile", "<= 1"]),
    ("OPSM threshold 0", lambda: GRPOConfig(off_policy_mask_threshold=0.0), ["grpo.off_policy_mask_threshold", "> 0"]),
    ("unknown KL estimator", lambda: GRPOConfig(kl_estimator="k4"), ["grpo.kl_estimator", "'k3'"]),
    ("entropy_coef NaN", lambda: GRPOConfig(entropy_coef=float("nan")), ["grpo.entropy_coef", "finite"]),
    ("entropy bounds reversed", lambda: GRPOConfig(entropy_coef_min=0.5, entropy_coef_max=0.1),
     ["grpo.entropy_coef_max", ">= entropy_coef_min=0.5"]),
    ("negative entropy bound", lambda: GRPOConfig(entropy_coef_min=-0.1), ["grpo.entropy_coef_min", ">= 0"]),
    ("entropy step 0", lambda: GRPOConfig(entropy_coef_delta=0.0), ["grpo.entropy_coef_delta", "> 0"]),
    ("negative entropy target", lambda: GRPOConfig(entropy_target=-1.0), ["grpo.entropy_target", ">= 0"]),
    ("adaptive entropy starting outside its bounds", lambda: GRPOConfig(use_adaptive_entropy=True, entropy_coef=2.0),
     ["grpo.entropy_coef=2.0", "use_adaptive_entropy", "[0.0, 1.0]"]),
    ("max_completion_length 0", lambda: GRPOConfig(max_completion_length=0), ["grpo.max_completion_length", ">= 1"]),
    (
        "reward_weights length mismatch",
        lambda: TrainConfig(grpo=GRPOConfig(reward_weights=(1.0,)), reward=RewardConfig(functions=("a", "b"))),
        ["grpo.reward_weights", "1 entries", "names 2", "one weight per function"],
    ),
    (
        "effective batch not divisible by num_generations",
        bad_batch(per_device=6, spg=1, g=4),
        ["grpo.num_generations=4", "effective batch size", "= 6", "divisible"],
    ),
    (
        "one unique prompt per generation",
        bad_batch(per_device=8, spg=1, g=8),
        ["1 unique prompt", "at least 2", "batch.steps_per_generation"],
    ),
    ("temperature 0", lambda: GenerationConfig(temperature=0.0), ["generation.temperature", "> 0"]),
    ("top_p > 1", lambda: GenerationConfig(top_p=1.5), ["generation.top_p", "0 < top_p <= 1"]),
    ("min_p > 1", lambda: GenerationConfig(min_p=2.0), ["generation.min_p", "0 <= min_p <= 1"]),
    ("top_k 0", lambda: GenerationConfig(top_k=0), ["generation.top_k", ">= 1"]),
    ("per-device batch 0", lambda: BatchConfig(per_device_train_batch_size=0), ["batch.per_device_train_batch_size", ">= 1"]),
    ("float accumulation", lambda: BatchConfig(gradient_accumulation_steps=2.0), ["batch.gradient_accumulation_steps", "integer"]),
    ("unknown dtype", lambda: ModelConfig(dtype="fp8"), ["model.dtype", "'bfloat16'"]),
    ("lora dropout 1", lambda: LoraConfig(dropout=1.0), ["lora.dropout", "0 <= dropout < 1"]),
    ("lora without modules", lambda: LoraConfig(target_modules=()), ["lora.target_modules", "lora.enabled=false"]),
    ("adam beta2 = 1", lambda: OptimConfig(adam_beta2=1.0), ["optim.adam_beta2", "0 <= beta < 1"]),
    ("negative learning rate", lambda: OptimConfig(learning_rate=-1e-6), ["optim.learning_rate", "> 0"]),
    ("unknown scheduler", lambda: OptimConfig(lr_scheduler_type="step"), ["optim.lr_scheduler_type", "'cosine'"]),
    ("unknown rollout backend", lambda: RolloutConfig(backend="sglang"), ["rollout.backend", "'vllm'"]),
    (
        "colocate with several rollout workers",
        lambda: TrainConfig(rollout=RolloutConfig(num_workers=2), run=RunConfig(mode="colocate")),
        ["run.mode='colocate'", "rollout.num_workers=1"],
    ),
    (
        "colocate with several learner processes",
        lambda: TrainConfig(batch=BatchConfig(num_processes=2), run=RunConfig(mode="colocate")),
        ["run.mode='colocate'", "batch.num_processes=1"],
    ),
    (
        "DeepSpeed in colocate mode",
        lambda: TrainConfig(batch=BatchConfig(train_backend="deepspeed_zero2"), run=RunConfig(mode="colocate")),
        ["batch.train_backend='deepspeed_zero2'", "run.mode='distributed'"],
    ),
    (
        "DeepSpeed with an accumulation window across generations",
        lambda: TrainConfig(batch=BatchConfig(train_backend="deepspeed_zero3", gradient_accumulation_steps=4,
                                              steps_per_generation=2)),
        ["batch.train_backend='deepspeed_zero3'", "pending gradients", "a divisor of 2"],
    ),
    (
        "optimizer offload without DeepSpeed",
        lambda: BatchConfig(zero_offload_optimizer=True),
        ["batch.zero_offload_optimizer=True", "'deepspeed_zero2'"],
    ),
    ("resource without amount", lambda: RolloutConfig(resources=("node_a",)), ["rollout.resources", "'NAME=AMOUNT'"]),
    ("resource amount 0", lambda: RewardConfig(resources=("node_a=0",)), ["reward.resources", "AMOUNT > 0"]),
    ("GPU as a custom resource", lambda: BatchConfig(learner_resources=("GPU=1",)), ["batch.learner_resources", "not CPU/GPU"]),
    ("unknown sync backend", lambda: RolloutConfig(sync_backend="nccl"), ["rollout.sync_backend", "'collective'"]),
    ("sync timeout 0", lambda: RolloutConfig(sync_timeout_s=0), ["rollout.sync_timeout_s", "> 0"]),
    ("blank reward function", lambda: RewardConfig(functions=("a", " ")), ["reward.functions", "module:function"]),
    ("reward timeout 0", lambda: RewardConfig(timeout_s=0), ["reward.timeout_s", "> 0"]),
    ("unknown report sink", lambda: RunConfig(report_to=("mlflow",)), ["run.report_to", "'wandb'"]),
    ("max_steps 0", lambda: RunConfig(max_steps=0), ["run.max_steps", ">= 1"]),
    ("negative keep_last_n", lambda: RunConfig(keep_last_n=-1), ["run.keep_last_n", ">= 0"]),
    ("blank resume", lambda: RunConfig(resume=" "), ["run.resume", "'latest'"]),
    ("no skips allowed", lambda: RunConfig(max_consecutive_skips=0), ["run.max_consecutive_skips", ">= 1"]),
    (
        "4-bit base with full fine-tuning",
        lambda: TrainConfig(model=ModelConfig(load_in_4bit=True), lora=LoraConfig(enabled=False)),
        ["model.load_in_4bit=true", "set lora.enabled=true"],
    ),
    (
        "4-bit base under DeepSpeed",
        lambda: TrainConfig(
            model=ModelConfig(load_in_4bit=True), batch=BatchConfig(train_backend="deepspeed_zero2"),
            run=RunConfig(mode="distributed"),
        ),
        ["model.load_in_4bit=true is not supported", "batch.train_backend='plain'"],
    ),
    (
        "checkpoints inside a generation cycle",
        lambda: TrainConfig(batch=BatchConfig(steps_per_generation=2), run=RunConfig(save_steps=3)),
        ["run.save_steps=3", "takes 2 optimizer steps", "multiple of 2"],
    ),
]


@pytest.mark.parametrize("build, needles", [b[1:] for b in BAD_CONFIGS], ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_rejected_with_a_clear_message(build, needles):
    with pytest.raises(ConfigError) as info:
        build()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
