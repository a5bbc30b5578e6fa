"""The training precision decided per device: bf16 autocast only where it is native."""

from __future__ import annotations

import pytest
import torch

from models.precision import (
    Precision,
    PrecisionError,
    cpu_bf16_flags,
    training_precision,
)

CPU = torch.device("cpu")

#: a Zen 3 EPYC's flags line (shortened): AVX2, no native bf16
ZEN3 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
    "flags\t\t: fpu vme de pse tsc msr pae mce sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c "
    "avx2 bmi2 sha_ni vaes vpclmulqdq\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n"
)
#: a Cooper Lake / Zen 4 line (avx512_bf16) and a Sapphire Rapids one (amx_bf16 too)
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512vl\n"
SPR = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"


def test_cpu_flags_are_read_from_cpuinfo_text() -> None:
    assert cpu_bf16_flags(ZEN3) == ()
    assert cpu_bf16_flags(ZEN4) == ("avx512_bf16",)
    assert cpu_bf16_flags(SPR) == ("avx512_bf16", "amx_bf16")
    # a flag name inside another word or outside the flags line does not count
    assert cpu_bf16_flags("model name\t: avx512_bf16 marketing\nflags\t: avx512_bf16x\n") == ()


def test_cpu_auto_is_bf16_only_with_native_support() -> None:
    zen3 = training_precision(CPU, "auto", cpuinfo=ZEN3)
    assert zen3.precision == Precision.FP32 and zen3.autocast_dtype is None
    assert "without native bf16" in zen3.reason
    for text in (ZEN4, SPR):
        native = training_precision(CPU, Precision.AUTO, cpuinfo=text)
        assert native.precision == Precision.BF16 and native.autocast_dtype == torch.bfloat16
        assert not native.needs_grad_scaler and "avx512_bf16" in native.reason
    assert training_precision(CPU, "fp32", cpuinfo=SPR).precision == Precision.FP32


def test_explicit_bf16_on_a_cpu_without_it_is_refused_with_the_reason() -> None:
    with pytest.raises(PrecisionError, match=r"no native bf16.*avx512_bf16 or amx_bf16"):
        training_precision(CPU, "bf16", cpuinfo=ZEN3)
    assert training_precision(CPU, "bf16", cpuinfo=ZEN4).precision == Precision.BF16
    for bad in ("fp16", "half", "auto "):
        with pytest.raises(PrecisionError, match="auto, fp32, bf16"):
            training_precision(CPU, bad, cpuinfo=ZEN4)


def test_this_machine_gets_what_its_cpu_reports() -> None:
    flags = cpu_bf16_flags()
    chosen = training_precision(CPU)
    assert chosen.precision == (Precision.BF16 if flags else Precision.FP32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_gets_bf16_or_fp16_with_a_scaler() -> None:
    chosen = training_precision(torch.device("cuda"))
    if torch.cuda.is_bf16_supported():
        assert chosen.precision == Precision.BF16 and not chosen.needs_grad_scaler
    else:
        assert chosen.precision == Precision.FP16 and chosen.needs_grad_scaler
