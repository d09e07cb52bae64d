"""The setting syntax of the A/B scripts (device_gemv_rule_ab.py, device_prefill_spread.py, device_host_time.py):
space-separated NAME=VALUE items, each a module attribute to set; VALUE an int, None, a comma list of ints (a tuple),
or else a string. Imported from the scripts' own folder (python3 puts a script's folder on sys.path)."""


def parse(setting: str) -> dict:
    """"GEMV_ROWS=16 WGMMA_FP8_FIRST=2048,4097 X=None" -> {"GEMV_ROWS": 16, "WGMMA_FP8_FIRST": (2048, 4097), "X": None}"""
    out = {}
    for item in setting.split():
        k, v = item.split("=", 1)
        out[k] = (tuple(int(x) for x in v.split(",")) if "," in v else int(v) if v.lstrip("-").isdigit()
                  else None if v == "None" else v)
    return out
