"""Real tegrastats lines of each L4T / JetPack release (as NVIDIA documents and users post them), with the values a reader gets from them by eye."""

import pytest

from bap.runtime.tegrastats import parse_tegrastats

LINES = {
    "tx1_l4t28": (
        "RAM 3468/3983MB (lfb 48x4MB) SWAP 873/8192MB (cached 295MB) cpu [17%,13%,29%,5%]@408 EMC 1%@408 APE 25 GR3D 3%@76",
        dict(ram=(3468, 3983), gpu=3.0, power=None, cpus=4),
    ),
    "nano_jp4": (
        "RAM 1655/3956MB (lfb 311x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [14%@204,14%@204,10%@204,11%@204] EMC_FREQ 3%@1600 GR3D_FREQ 16%@76 APE 25 PLL@36C CPU@39C iwlwifi@44C PMIC@50C GPU@37C AO@47C thermal@38C POM_5V_IN 2247/2189 POM_5V_GPU 78/78 POM_5V_CPU 275/275",
        dict(ram=(1655, 3956), gpu=16.0, power=2247.0, cpus=4),
    ),
    "nano_jetson_stats": (
        "RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) IRAM 0/252kB(lfb 252kB) CPU [30%@1036,33%@1036,28%@1036,26%@1036] EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 NVENC 716 NVDEC 716 APE 25 PLL@57C CPU@60.5C PMIC@100C GPU@59C AO@65C thermal@59.75C POM_5V_IN 4520/4680 POM_5V_GPU 0/0 POM_5V_CPU 1078/1205",
        dict(ram=(1180, 3965), gpu=0.0, power=4520.0, cpus=4),
    ),
    "tx2_emulated": (
        "RAM 4722/7844MB (lfb 1x512kB) CPU [55%@2035,14%@2034,27%@2034,55%@2035,47%@2035,45%@2035] SWAP 149/1024MB (cached 7MB) EMC_FREQ 2%@1866 GR3D_FREQ 42%@1300 APE 150 MTS fg 0% bg 0% BCPU@-45C MCPU@-45C GPU@-51C PLL@45C AO@47.5C Tboard@37C Tdiode@46.75C PMIC@100C thermal@46.4C VDD_IN 14025/14416 VDD_CPU 2209/2538 VDD_GPU 6854/6903 VDD_SOC 1371/1370 VDD_WIFI 19/19 NVENC 716 NVDEC 716 VDD_DDR 2702/2702",
        dict(ram=(4722, 7844), gpu=42.0, power=14025.0, cpus=6),
    ),
    "agx_xavier_jp42": (
        "RAM 14700/15692MB (lfb 3x2MB) SWAP 898/8192MB (cached 23MB) CPU [0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190,0%@1190] EMC_FREQ 0% GR3D_FREQ 0% AO@30C GPU@30.5C Tboard@31C Tdiode@32C AUX@30.5C CPU@31.5C thermal@30.8C PMIC@100C GPU 463/463 CPU 618/618 SOC 2936/2936 CV 0/0 VDDRQ 309/309 SYS5V 3306/3306",
        dict(ram=(14700, 15692), gpu=0.0, power=463 + 618 + 2936 + 0 + 309 + 3306.0, cpus=8),
    ),
    "agx_orin_jp5": (
        "01-03-2023 16:07:54 RAM 2257/30536MB (lfb 5392x4MB) SWAP 0/15268MB (cached 0MB) CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@204 GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0 NVJPG1 729 VIC_FREQ 115 APE 233 CV0@-256C CPU@41.437C Tboard@29C SOC2@39.062C Tdiode@30.75C SOC0@39.031C CV1@-256C GPU@-256C tj@41.656C SOC1@38.937C CV2@-256C VDD_GPU_SOC 2390mW/2390mW VDD_CPU_CV 796mW/796mW VIN_SYS_5V0 3522mW/3522mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW",
        dict(ram=(2257, 30536), gpu=0.0, power=2390 + 796 + 3522 + 301.0, cpus=12),
    ),
    "orin_nano_jp6_idle": (
        "04-27-2026 14:59:43 RAM 775/7620MB (lfb 3x4MB) SWAP 0/3810MB (cached 0MB) CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] GR3D_FREQ 0% cpu@48.562C soc2@47.531C soc0@47.968C gpu@48.5C tj@49.062C soc1@49.062C VDD_IN 4761mW/4777mW VDD_CPU_GPU_CV 515mW/502mW VDD_SOC 1428mW/1428mW",
        dict(ram=(775, 7620), gpu=0.0, power=4761.0, cpus=6),
    ),
    "orin_nano_jp6_clocks": (
        "04-27-2026 15:00:54 RAM 779/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [0%@1344,0%@1344,0%@1344,0%@1344,0%@1344,0%@1344] GR3D_FREQ 0% cpu@50.125C soc2@49.125C soc0@49.25C gpu@50.562C tj@50.562C soc1@50.437C VDD_IN 6626mW/6625mW VDD_CPU_GPU_CV 1228mW/1230mW VDD_SOC 2380mW/2380mW",
        dict(ram=(779, 7620), gpu=0.0, power=6626.0, cpus=6),
    ),
    "orin_nano_jp6_load": (
        "10-09-2025 00:27:03 RAM 5173/7620MB (lfb 1x4MB) SWAP 111/3810MB (cached 0MB) CPU [45%@1728,30%@1728,42%@1728,28%@1728,46%@1113,39%@1113] GR3D_FREQ 55% cpu@48.781C soc2@48.093C soc0@48.156C gpu@50.718C tj@50.718C soc1@48.281C VDD_IN 6030mW/6030mW VDD_CPU_GPU_CV 1913mW/1913mW VDD_SOC 1557mW/1557mW",
        dict(ram=(5173, 7620), gpu=55.0, power=6030.0, cpus=6),
    ),
    "agx_orin_jp72": (
        "07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) CPU [23%@2201,10%@2201,4%@2201,14%@2201,30%@2201,18%@2201,10%@2201,10%@2201,33%@2201,7%@2201,5%@2201,27%@2201] EMC_FREQ 3%@3199 GR3D_FREQ 12%@[1300,1300] NVENC0 off NVDEC0 off NVJPG0 off NVJPG1 off VIC off OFA off NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@52.968C/52.968C soc2@48.406C/48.406C soc0@49.531C/49.531C gpu@47.625C/47.625C VDD_GPU_SOC 5139mW/5139mW/5139mW VDD_CPU_CV 3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW",
        dict(ram=(20642, 62817), gpu=12.0, power=5139 + 3268 + 5500.0, cpus=12),
    ),
}


@pytest.mark.parametrize("name", list(LINES))
def test_fixture_lines(name):
    line, want = LINES[name]
    s = parse_tegrastats(line)
    assert (s.ram_used_mb, s.ram_total_mb) == want["ram"]
    assert s.gpu_load == want["gpu"]
    assert s.board_power_mw == want["power"]
    assert len(s.cpu_load) == want["cpus"]


def test_details():
    s = parse_tegrastats(LINES["agx_orin_jp72"][0])
    assert s.gpu_mhz == [1300, 1300]  # per-GPC array form, not half-parsed
    assert s.temps_c["cpu"] == pytest.approx(52.968)
    s = parse_tegrastats(LINES["agx_orin_jp5"][0])
    assert "GPU" not in s.temps_c  # -256C: sensor off
    assert {"NC", "NC_2"} <= set(s.rails_mw)  # repeated rail names kept apart
    s = parse_tegrastats(LINES["tx1_l4t28"][0])
    assert s.cpu_load == [17.0, 13.0, 29.0, 5.0] and s.gpu_mhz == [76]
    assert parse_tegrastats("GR3D_FREQ @[1000,1000,1000]").gpu_mhz == [1000, 1000, 1000]  # Thor: no load field
    empty = parse_tegrastats("garbage without fields")
    assert empty.ram_used_mb is None and empty.board_power_mw is None
