"""The dominant-script signal used for per-language statistics when no language column exists."""

from __future__ import annotations

import pytest

from embedder.language import dominant_script


@pytest.mark.parametrize(("text", "script"), [
    ("Reset the router", "script:Latin"), ("Сбросьте роутер", "script:Cyrillic"), ("重置路由器", "script:Han"),
    ("ルーターをリセットする", "script:Kana"), ("素早い茶色の狐", "script:Kana"), ("أعد ضبط الموجه", "script:Arabic"),
    ("राउटर रीसेट करें", "script:Devanagari"), ("라우터를 재설정", "script:Hangul"), ("1234 !?", "script:none"),
    ("Wi-Fi ルーター", "script:Kana"),
])
def test_dominant_script(text: str, script: str) -> None:
    assert dominant_script(text) == script
