"""Language codes: BCP 47 tags checked and normalised once, so `JA`, `ja` and `ja` in a dataset all meet as `ja`.

    normalize_language("zh-hant", "data.datasets.x.language")   # -> "zh-Hant"
    normalize_language("japanese", "data_mix.sources")           # ConfigError: ... Japanese is 'ja'
    language_name("ja")                                         # -> "Japanese"

A tag is a primary language subtag (an ISO 639-1 code of two letters, or an ISO 639-2/3 code of three) followed by
optional script (`Hant`), region (`BR`, `419`) and variant subtags, separated by hyphens. Case is free on input
(BCP 47 tags are case-insensitive) and normalised on output: language lower, script title, region upper.
"""

from __future__ import annotations

import re

from medtune.config.checks import ConfigError

# ISO 639-1: every two-letter language code, with its English name (plot titles, hints for a name given as a code)
_ISO_639_1 = (
    "aa Afar|ab Abkhazian|ae Avestan|af Afrikaans|ak Akan|am Amharic|an Aragonese|ar Arabic|as Assamese|av Avaric|"
    "ay Aymara|az Azerbaijani|ba Bashkir|be Belarusian|bg Bulgarian|bi Bislama|bm Bambara|bn Bengali|bo Tibetan|"
    "br Breton|bs Bosnian|ca Catalan|ce Chechen|ch Chamorro|co Corsican|cr Cree|cs Czech|cu Church Slavic|cv Chuvash|"
    "cy Welsh|da Danish|de German|dv Divehi|dz Dzongkha|ee Ewe|el Greek|en English|eo Esperanto|es Spanish|"
    "et Estonian|eu Basque|fa Persian|ff Fulah|fi Finnish|fj Fijian|fo Faroese|fr French|fy Western Frisian|ga Irish|"
    "gd Scottish Gaelic|gl Galician|gn Guarani|gu Gujarati|gv Manx|ha Hausa|he Hebrew|hi Hindi|ho Hiri Motu|"
    "hr Croatian|ht Haitian|hu Hungarian|hy Armenian|hz Herero|ia Interlingua|id Indonesian|ie Interlingue|ig Igbo|"
    "ii Sichuan Yi|ik Inupiaq|io Ido|is Icelandic|it Italian|iu Inuktitut|ja Japanese|jv Javanese|ka Georgian|"
    "kg Kongo|ki Kikuyu|kj Kuanyama|kk Kazakh|kl Kalaallisut|km Khmer|kn Kannada|ko Korean|kr Kanuri|ks Kashmiri|"
    "ku Kurdish|kv Komi|kw Cornish|ky Kyrgyz|la Latin|lb Luxembourgish|lg Ganda|li Limburgish|ln Lingala|lo Lao|"
    "lt Lithuanian|lu Luba-Katanga|lv Latvian|mg Malagasy|mh Marshallese|mi Maori|mk Macedonian|ml Malayalam|"
    "mn Mongolian|mr Marathi|ms Malay|mt Maltese|my Burmese|na Nauru|nb Norwegian Bokmal|nd North Ndebele|ne Nepali|"
    "ng Ndonga|nl Dutch|nn Norwegian Nynorsk|no Norwegian|nr South Ndebele|nv Navajo|ny Chichewa|oc Occitan|"
    "oj Ojibwa|om Oromo|or Odia|os Ossetian|pa Punjabi|pi Pali|pl Polish|ps Pashto|pt Portuguese|qu Quechua|"
    "rm Romansh|rn Rundi|ro Romanian|ru Russian|rw Kinyarwanda|sa Sanskrit|sc Sardinian|sd Sindhi|se Northern Sami|"
    "sg Sango|si Sinhala|sk Slovak|sl Slovenian|sm Samoan|sn Shona|so Somali|sq Albanian|sr Serbian|ss Swati|"
    "st Southern Sotho|su Sundanese|sv Swedish|sw Swahili|ta Tamil|te Telugu|tg Tajik|th Thai|ti Tigrinya|tk Turkmen|"
    "tl Tagalog|tn Tswana|to Tonga|tr Turkish|ts Tsonga|tt Tatar|tw Twi|ty Tahitian|ug Uyghur|uk Ukrainian|ur Urdu|"
    "uz Uzbek|ve Venda|vi Vietnamese|vo Volapuk|wa Walloon|wo Wolof|xh Xhosa|yi Yiddish|yo Yoruba|za Zhuang|"
    "zh Chinese|zu Zulu"
)
LANGUAGE_NAMES: dict[str, str] = dict(item.split(" ", 1) for item in _ISO_639_1.split("|"))
# country codes that people write for the language spoken there (and that are no language code themselves)
_COUNTRY_AS_LANGUAGE = {"jp": "ja", "cn": "zh", "vn": "vi", "dk": "da", "gr": "el", "cz": "cs", "ua": "uk",
                        "us": "en", "gb": "en", "kp": "ko", "hk": "zh-Hant", "at": "de-AT", "il": "he", "ir": "fa",
                        "rs": "sr", "al": "sq", "ge": "ka"}  # fmt: skip
_BY_NAME = {name.lower(): code for code, name in LANGUAGE_NAMES.items()}
_SUBTAG = re.compile(r"[A-Za-z0-9]{1,8}")
_VARIANT = re.compile(r"[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}")


def _hint(primary: str) -> str:
    """A guess at the code meant by a name or a country code ('' when there is none)."""
    low = primary.lower()
    if low in _BY_NAME:
        return f" {LANGUAGE_NAMES[_BY_NAME[low]]} is {_BY_NAME[low]!r}."
    if low in _COUNTRY_AS_LANGUAGE and low not in LANGUAGE_NAMES:
        return f" {low.upper()} is a country code; its language is probably {_COUNTRY_AS_LANGUAGE[low]!r}."
    return ""


def _bad(code: str, where: str, why: str, hint: str = "") -> ConfigError:
    return ConfigError(
        f"{where}: {code!r} is not a language code: {why}.{hint} Use a BCP 47 tag: an ISO 639 code such as 'ja', 'vi', "
        "'de', 'ko', 'en', optionally with a script or region such as 'zh-Hant' or 'pt-BR'."
    )


def normalize_language(code: object, where: str) -> str:
    """The BCP 47 tag in canonical case ('zh-hant' -> 'zh-Hant'); ConfigError naming `where` and the fix."""
    text = str(code).strip()
    if "_" in text:
        fixed = text.replace("_", "-")
        hint = _hint(fixed.split("-")[0]) or f" Did you mean {fixed!r}?"
        raise _bad(text, where, "subtags are separated by '-', not '_'", hint)
    parts = text.split("-")
    if not text or not all(_SUBTAG.fullmatch(p) for p in parts):
        raise _bad(text, where, "a tag is letters and digits in subtags of 1-8 characters joined by '-'")
    primary = parts[0].lower()
    if not re.fullmatch(r"[a-z]{2,3}", primary):
        raise _bad(text, where, f"the language subtag {parts[0]!r} is not 2 or 3 letters", _hint(primary))
    if len(primary) == 2 and primary not in LANGUAGE_NAMES:
        raise _bad(text, where, f"{primary!r} is no ISO 639-1 code", _hint(primary))
    out = [primary]
    for part in parts[1:]:
        if len(part) == 4 and part.isalpha():
            out.append(part.title())  # script, e.g. Hant, Latn
        elif (len(part) == 2 and part.isalpha()) or (len(part) == 3 and part.isdigit()):
            out.append(part.upper())  # region, e.g. BR, 419
        elif _VARIANT.fullmatch(part) or (len(part) == 3 and part.isalpha()):
            out.append(part.lower())  # variant or extended language subtag
        else:
            raise _bad(text, where, f"the subtag {part!r} is no script, region or variant")
    return "-".join(out)


def language_name(code: str) -> str:
    """'ja' -> 'Japanese', 'zh-Hant' -> 'Chinese (Hant)'; the code itself when it has no name here."""
    primary, _, rest = code.partition("-")
    name = LANGUAGE_NAMES.get(primary)
    if name is None:
        return code
    return f"{name} ({rest})" if rest else name
