"""A realistic, deterministic synthetic list of dishonest judgment debtors.

Why it exists: the real list (失信被执行人 and 限制消费人员, published by the
courts) is personal data that cannot be copied into tests, demos or load
tests, yet the loader, the index and the server must be exercised with rows
that look like the real feed: valid resident IDs and unified social credit
codes, minority names with a middle dot, organisations with their legal
representatives, case numbers in the courts' own form, expired and suspended
entries, exemption windows. ``gen-data`` and the benchmarks use this module to
write such a snapshot (DESIGN.md section 4, "List files"), ten million rows if
need be, and the same ``(count, seed, as_of)`` always gives the same bytes.

Speed: ten million rows must not take an afternoon. The check characters are
composed from tables learned once from ``shixin_domain.identity`` (see
``_Composer``), so the generator can never disagree with the validator; every
other choice is a look-up in a table of ``2**k`` slots indexed by one
``getrandbits(k)`` of a single ``random.Random(seed)``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import BinaryIO, TypeVar

import orjson

from loader.feed import header_row
from shixin_domain.identity import resident_id_check_char, uscc_check_char
from shixin_domain.model import CHINA_TZ

__all__ = ["iter_entries", "write_snapshot"]

Entry = dict[str, object]
_T = TypeVar("_T")

# Rows are joined and written 100 at a time (~75 kB). Measured: chunks of 1,000
# or 10,000 rows cost about 10 us more per row, as they no longer fit the CPU cache.
_CHUNK_ROWS = 100
_PROGRESS_ROWS = 100_000  # a multiple of _CHUNK_ROWS, so progress reports round numbers
_USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # GB 32100: no I, O, S, V, Z

# --------------------------------------------------------------------------
# Static tables
# --------------------------------------------------------------------------

# Real county-level codes (GB/T 2260): code, the court's place name (the
# basic people's court is place + 人民法院), and the city as used in company names.
_REGION_ROWS = """
110101 北京市东城区 北京
110102 北京市西城区 北京
110105 北京市朝阳区 北京
110106 北京市丰台区 北京
110108 北京市海淀区 北京
110114 北京市昌平区 北京
110115 北京市大兴区 北京
120101 天津市和平区 天津
120104 天津市南开区 天津
120116 天津市滨海新区 天津
130102 石家庄市长安区 石家庄
130104 石家庄市桥西区 石家庄
130203 唐山市路北区 唐山
130602 保定市竞秀区 保定
140105 太原市小店区 太原
140106 太原市迎泽区 太原
150102 呼和浩特市新城区 呼和浩特
150203 包头市昆都仑区 包头
210102 沈阳市和平区 沈阳
210106 沈阳市铁西区 沈阳
210202 大连市中山区 大连
220102 长春市南关区 长春
220104 长春市朝阳区 长春
230102 哈尔滨市道里区 哈尔滨
230103 哈尔滨市南岗区 哈尔滨
310101 上海市黄浦区 上海
310104 上海市徐汇区 上海
310105 上海市长宁区 上海
310106 上海市静安区 上海
310107 上海市普陀区 上海
310110 上海市杨浦区 上海
310112 上海市闵行区 上海
310115 上海市浦东新区 上海
320102 南京市玄武区 南京
320106 南京市鼓楼区 南京
320211 无锡市滨湖区 无锡
320505 苏州市虎丘区 苏州
320582 张家港市 张家港
320583 昆山市 昆山
330102 杭州市上城区 杭州
330106 杭州市西湖区 杭州
330108 杭州市滨江区 杭州
330203 宁波市海曙区 宁波
330302 温州市鹿城区 温州
330782 义乌市 义乌
340102 合肥市瑶海区 合肥
340104 合肥市蜀山区 合肥
350102 福州市鼓楼区 福州
350203 厦门市思明区 厦门
350582 晋江市 晋江
360102 南昌市东湖区 南昌
370102 济南市历下区 济南
370202 青岛市市南区 青岛
370212 青岛市崂山区 青岛
370602 烟台市芝罘区 烟台
410102 郑州市中原区 郑州
410105 郑州市金水区 郑州
410302 洛阳市老城区 洛阳
420102 武汉市江岸区 武汉
420106 武汉市武昌区 武汉
420111 武汉市洪山区 武汉
430102 长沙市芙蓉区 长沙
430104 长沙市岳麓区 长沙
440103 广州市荔湾区 广州
440104 广州市越秀区 广州
440106 广州市天河区 广州
440303 深圳市罗湖区 深圳
440304 深圳市福田区 深圳
440305 深圳市南山区 深圳
440306 深圳市宝安区 深圳
440307 深圳市龙岗区 深圳
440402 珠海市香洲区 珠海
440604 佛山市禅城区 佛山
450102 南宁市兴宁区 南宁
450103 南宁市青秀区 南宁
460106 海口市龙华区 海口
460202 三亚市海棠区 三亚
500103 重庆市渝中区 重庆
500105 重庆市江北区 重庆
500112 重庆市渝北区 重庆
510104 成都市锦江区 成都
510105 成都市青羊区 成都
510107 成都市武侯区 成都
520102 贵阳市南明区 贵阳
520103 贵阳市云岩区 贵阳
530102 昆明市五华区 昆明
530103 昆明市盘龙区 昆明
540102 拉萨市城关区 拉萨
610102 西安市新城区 西安
610104 西安市莲湖区 西安
610113 西安市雁塔区 西安
620102 兰州市城关区 兰州
630102 西宁市城东区 西宁
640104 银川市兴庆区 银川
650102 乌鲁木齐市天山区 乌鲁木齐
650103 乌鲁木齐市沙依巴克区 乌鲁木齐
652901 阿克苏市 阿克苏
653101 喀什市 喀什
"""

# The one-character province abbreviation used in case numbers.
_PROVINCE_ABBR = {
    "11": "京", "12": "津", "13": "冀", "14": "晋", "15": "内", "21": "辽", "22": "吉",
    "23": "黑", "31": "沪", "32": "苏", "33": "浙", "34": "皖", "35": "闽", "36": "赣",
    "37": "鲁", "41": "豫", "42": "鄂", "43": "湘", "44": "粤", "45": "桂", "46": "琼",
    "50": "渝", "51": "川", "52": "黔", "53": "云", "54": "藏", "61": "陕", "62": "甘",
    "63": "青", "64": "宁", "65": "新",
}  # fmt: skip

_COMMON_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程"
    "苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝"
    "龚邵万钱严覃武戴莫孔向汤"
)
_COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛", "东方", "皇甫")

_MALE_GIVEN = (
    "伟强磊军勇杰涛斌超明刚平辉鹏华飞鑫波宇浩凯健俊帆帅旭宁龙林阳建国峰海亮成东志文振兴德福贵生"
    "元全胜学祥才发武新利清彬富顺信子昌康星光天达安岩中茂进有坚和彪博诚先敬震壮会思群豪心邦承乐"
    "绍功松善厚庆民友裕河哲江政谦翰朗伯宏言鸣朋梁栋维启克伦翔泽晨辰家致树炎行时泰盛雄琛钧冠腾楠"
)
_FEMALE_GIVEN = (
    "芳娜敏静丽艳娟霞秀玲桂英慧巧美淑惠珠翠雅芝玉萍红月彩春菊兰凤洁梅琳素云莲真环雪荣爱妹香瑞"
    "佳嘉琼勤珍贞莉竹倩婷婉娴瑾颖露瑶怡雁蓓仪荷丹蓉君琴蕊薇菁梦岚婕馨韵园艺卿澜纯悦昭冰爽茗羽"
    "希欣滢筠柔凝晓欢芸菲伊亚宜可舒影妮宝琪晴雯萱雨曼紫逸蝶小"
)


@dataclass(frozen=True, slots=True)
class _MinorityNames:
    """Two-part names (given name · father's name) of one people, and where they live."""

    regions: tuple[str, ...]
    male: tuple[str, ...]
    female: tuple[str, ...]
    second: tuple[str, ...]


_MINORITIES = (
    _MinorityNames(  # Uyghur
        regions=("650102", "650103", "652901", "653101"),
        male=("艾力", "买买提", "艾尔肯", "阿不都", "吐尔逊", "依明", "热合曼", "努尔", "阿里木",
              "伊力哈木", "麦麦提", "艾合买提", "库尔班", "肉孜", "吾斯曼"),
        female=("阿依古丽", "古丽娜尔", "热依拉", "帕提古丽", "迪丽努尔", "米热古丽", "阿依努尔",
                "再努尔", "祖丽皮亚", "努尔古丽"),
        second=("买买提", "吐尔逊", "阿不都热合曼", "艾则孜", "司马义", "依明", "卡德尔", "玉素甫",
                "阿布拉", "吾守尔", "热西提", "克里木"),
    ),
    _MinorityNames(  # Tibetan
        regions=("540102", "630102"),
        male=("扎西", "次仁", "多吉", "顿珠", "平措", "旺堆", "格桑", "索朗", "尼玛", "达瓦",
              "洛桑", "边巴"),
        female=("卓玛", "央金", "拉姆", "德吉", "曲珍", "白玛", "格桑", "次仁", "尼珍"),
        second=("多吉", "顿珠", "次仁", "平措", "罗布", "普布", "扎西", "益西", "尼玛", "达瓦",
                "索朗", "旦增"),
    ),
    _MinorityNames(  # Mongolian
        regions=("150102", "150203"),
        male=("巴特尔", "苏和", "额尔敦", "朝鲁", "宝音", "那顺", "孟和", "巴图", "毕力格",
              "阿拉坦"),
        female=("其木格", "乌云", "萨仁", "娜仁", "高娃", "图雅", "斯琴", "其其格", "塔娜"),
        second=("巴特尔", "宝音", "图门", "巴雅尔", "那顺", "孟和", "吉日格勒", "额尔敦", "朝克",
                "布和"),
    ),
)  # fmt: skip

_BRAND_CHARS = (
    "华鑫盛恒泰达通远宏源信诚隆昌兴瑞祥润丰金银海天宇博创新安康嘉德正中联合益顺广汇景锦鸿凯永"
    "星辉腾飞龙凤佳和美明启睿智成尚优"
)
_INDUSTRIES = (
    "科技", "贸易", "建筑工程", "房地产开发", "餐饮管理", "物流", "投资管理", "商贸", "实业",
    "电子", "文化传媒", "农业发展", "汽车销售", "装饰工程", "供应链管理", "医药", "网络科技",
    "环保科技", "新能源科技", "服装", "机械设备", "建材", "酒店管理", "教育咨询", "化工",
)  # fmt: skip

_CIRCUMSTANCES = (
    "有履行能力而拒不履行生效法律文书确定义务",
    "违反财产报告制度",
    "违反限制消费令",
    "以伪造证据、暴力、威胁等方法妨碍、抗拒执行",
    "以虚假诉讼、虚假仲裁或者以隐匿、转移财产等方法规避执行",
    "无正当理由拒不履行执行和解协议",
)
_CIRCUMSTANCE_WEIGHTS = (60, 18, 10, 3, 4, 5)

# (prefix, suffix) around the amount of the obligation.
_OBLIGATIONS = (
    ("支付货款", "元及逾期付款利息"),
    ("偿还借款本金", "元及利息"),
    ("偿还借款", "元"),
    ("支付工程款", "元"),
    ("支付劳动报酬", "元"),
    ("赔偿经济损失", "元"),
    ("支付租金", "元及违约金"),
    ("返还购房款", "元"),
    ("支付服务费", "元"),
    ("支付借款及案件受理费共计", "元"),
)

# (lowest yuan, span in yuan, weight): most debts are tens of thousands.
_AMOUNT_BUCKETS = (
    (1_000, 9_000, 25),
    (10_000, 90_000, 40),
    (100_000, 900_000, 25),
    (1_000_000, 9_000_000, 8),
    (10_000_000, 90_000_000, 2),
)

# (age from, age to inclusive, weight): debtors are mostly of working age.
_AGE_WEIGHTS = ((18, 24, 1), (25, 34, 3), (35, 49, 4), (50, 59, 3), (60, 69, 2), (70, 80, 1))


def _weighted(items: Sequence[_T], weights: Sequence[int]) -> tuple[_T, ...]:
    """A look-up table in which each item appears ``weight`` times."""
    return tuple(item for item, w in zip(items, weights, strict=True) for _ in range(w))


def _unique(chars: str) -> tuple[str, ...]:
    """Each character once, first occurrence first (deterministic order)."""
    return tuple(dict.fromkeys(chars))


def _spread(items: Sequence[_T], bits: int) -> tuple[_T, ...]:
    """``items`` laid evenly onto ``2**bits`` slots, so that ``table[getrandbits(bits)]``
    picks one (nearly uniformly) with a single cheap call. Needs ``len(items) <= 2**bits``."""
    n = len(items)
    if not 0 < n <= 1 << bits:
        raise ValueError(f"{n} items do not fit {bits} bits")
    return tuple(items[(i * n) >> bits] for i in range(1 << bits))


# --------------------------------------------------------------------------
# Check characters, composed from parts
# --------------------------------------------------------------------------


class _Composer:
    """Check characters of 17-character strings assembled from parts.

    GB 11643 and GB 32100 both derive the check character one-to-one from a
    weighted sum of the positions modulo a prime (11 and 31). So the check
    character of a whole string follows from those of its parts, each taken
    alone with the other positions set to ``0``: ``rows[a][b]`` is the class of
    two parts of classes ``a`` and ``b`` together, and ``final[a][b]`` its check
    character. Both tables are learned from the domain's own check function (a
    few thousand calls, once), so a row costs a few tuple look-ups instead of
    calls of several microseconds, and can never disagree with the validator.
    """

    def __init__(self, check: Callable[[str], str], symbols: str, length: int = 17) -> None:
        zero = symbols[0]
        heads: dict[str, str] = {}
        tails: dict[str, str] = {}
        for a in symbols:
            for b in symbols:
                heads.setdefault(check(a + b + zero * (length - 2)), a + b)
                tails.setdefault(check(zero * (length - 2) + a + b), a + b)
        if heads.keys() != tails.keys():
            raise RuntimeError("check function is not a weighted sum over a prime field")
        chars = tuple(sorted(heads))
        self._index = {c: i for i, c in enumerate(chars)}
        middle = zero * (length - 4)
        self.rows: tuple[tuple[int, ...], ...] = tuple(
            tuple(self._index[check(heads[x] + middle + tails[y])] for y in chars) for x in chars
        )
        self.final: tuple[tuple[str, ...], ...] = tuple(
            tuple(chars[v] for v in row) for row in self.rows
        )
        self._check = check
        self._zero = zero
        self._length = length

    def part(self, text: str, offset: int) -> int:
        """The class of ``text`` placed at ``offset``, zeros elsewhere."""
        tail = self._length - offset - len(text)
        return self._index[self._check(self._zero * offset + text + self._zero * tail)]


@dataclass(frozen=True, slots=True)
class _Region:
    code: str
    court: str  # 北京市朝阳区人民法院
    city: str  # 北京, for company names
    case_prefix: str  # 京0105, for case numbers
    id_row: tuple[int, ...]  # resident ID classes: the code combined with any class
    uscc_new: int  # USCC class of "91" + code + "MA"
    uscc_old: int  # USCC class of "91" + code


Choices = tuple[tuple[str, int], ...]  # (text, composer class), 2**k of them


@dataclass(frozen=True, slots=True)
class _Tables:
    """Everything that depends on neither the seed nor the date (built once)."""

    id_final: tuple[tuple[str, ...], ...]
    id_rows: tuple[tuple[int, ...], ...]
    year_parts: dict[str, int]
    mmdd_parts: dict[str, int]
    male_seq: Choices  # odd sequence numbers (the 17th digit is odd for men)
    female_seq: Choices
    uscc_final: tuple[tuple[str, ...], ...]
    uscc_rows: tuple[tuple[int, ...], ...]
    uscc_pairs: tuple[Choices, ...]  # positions 10, 12, 14 after "MA": any two characters
    uscc_digit_pairs: tuple[Choices, ...]  # positions 8, 10, 12, 14: two digits
    uscc_last: Choices  # position 16
    regions: tuple[_Region, ...]  # 2**7 slots
    region_by_code: dict[str, _Region]


def _choices(composer: _Composer, offset: int, texts: Sequence[str], bits: int) -> Choices:
    return _spread([(text, composer.part(text, offset)) for text in texts], bits)


def _regions(ids: _Composer, uscc: _Composer) -> tuple[_Region, ...]:
    rows = []
    for line in _REGION_ROWS.strip().splitlines():
        code, place, city = line.split()
        rows.append(
            _Region(
                code=code,
                court=place + "人民法院",
                city=city,
                case_prefix=_PROVINCE_ABBR[code[:2]] + code[2:],
                id_row=ids.rows[ids.part(code, 0)],
                uscc_new=uscc.part("91" + code + "MA", 0),
                uscc_old=uscc.part("91" + code, 0),
            )
        )
    return tuple(rows)


@cache
def _tables() -> _Tables:
    ids = _Composer(resident_id_check_char, "0123456789")
    uscc = _Composer(uscc_check_char, _USCC_ALPHABET)
    regions = _regions(ids, uscc)
    days = [datetime.date(2000, 1, 1) + datetime.timedelta(days=d) for d in range(366)]
    digit_pairs = [a + b for a in "0123456789" for b in "0123456789"]
    any_pairs = [a + b for a in _USCC_ALPHABET for b in _USCC_ALPHABET]
    return _Tables(
        id_final=ids.final,
        id_rows=ids.rows,
        year_parts={str(y): ids.part(str(y), 6) for y in range(1900, 2100)},
        mmdd_parts={(m := d.strftime("%m%d")): ids.part(m, 10) for d in days},
        male_seq=_choices(ids, 14, [f"{n:03d}" for n in range(1, 1000, 2)], 9),
        female_seq=_choices(ids, 14, [f"{n:03d}" for n in range(0, 1000, 2)], 9),
        uscc_final=uscc.final,
        uscc_rows=uscc.rows,
        uscc_pairs=tuple(_choices(uscc, p, any_pairs, 10) for p in (10, 12, 14)),
        uscc_digit_pairs=tuple(_choices(uscc, p, digit_pairs, 7) for p in (8, 10, 12, 14)),
        uscc_last=_choices(uscc, 16, _USCC_ALPHABET, 5),
        regions=_spread(regions, 7),
        region_by_code={r.code: r for r in regions},
    )


# --------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------

Birth = tuple[str, int, int]  # (YYYYMMDD, resident ID class of the date, age at as_of)


def _births(tables: _Tables, as_of: datetime.date) -> tuple[Birth, ...]:
    """2**17 birth dates of people aged 18 to 80 at ``as_of``, ages weighted."""
    by_age: dict[int, list[Birth]] = {age: [] for age in range(18, 81)}
    rows = tables.id_rows
    for ordinal in range(as_of.toordinal() - 82 * 366, as_of.toordinal() - 17 * 365):
        born = datetime.date.fromordinal(ordinal)
        age = as_of.year - born.year - ((as_of.month, as_of.day) < (born.month, born.day))
        if age in by_age:
            ymd = born.strftime("%Y%m%d")
            part = rows[tables.year_parts[ymd[:4]]][tables.mmdd_parts[ymd[4:]]]
            by_age[age].append((ymd, part, age))
    weighted = [age for lo, hi, w in _AGE_WEIGHTS for age in range(lo, hi + 1) for _ in range(w)]
    ages = _spread(weighted, 8)
    return tuple(birth for age in ages for birth in _spread(by_age[age], 9))


class _Generator:
    """Draws entries from one ``random.Random(seed)``; the order of draws is fixed.

    Look-ups go through tables of ``2**k`` slots indexed by ``getrandbits(k)``;
    probabilities are ``random() < p``. Hot tables are attributes of ``self``.
    """

    def __init__(self, seed: int, as_of: datetime.date) -> None:
        t = self._t = _tables()
        rng = random.Random(seed)
        self._rand = rng.random
        self._bits = rng.getrandbits
        self._as_of = as_of.toordinal()
        self._date_base = self._as_of - 8 * 366
        self._dates = tuple(
            datetime.date.fromordinal(o).isoformat()
            for o in range(self._date_base, self._as_of + 7 * 366)
        )
        self._births = _births(t, as_of)
        self._regions = t.regions
        self._ages = _spread([b[2] for b in self._births[:: 1 << 9]], 8)
        common = tuple(_COMMON_SURNAMES)
        self._surnames = _spread(common + common[:20] * 3 + _COMPOUND_SURNAMES, 9)
        self._male = _spread(_unique(_MALE_GIVEN), 8)
        self._female = _spread(_unique(_FEMALE_GIVEN), 8)
        self._brands = _spread(_BRAND_CHARS, 6)
        self._industries = _spread(_INDUSTRIES, 5)
        self._circumstances = _spread(_weighted(_CIRCUMSTANCES, _CIRCUMSTANCE_WEIGHTS), 7)
        self._severities = _spread(_weighted(("一般", "较重", "严重"), (6, 3, 1)), 7)
        self._obligations = _spread(_OBLIGATIONS, 4)
        self._amounts = _spread([(lo, n) for lo, n, w in _AMOUNT_BUCKETS for _ in range(w)], 7)
        self._exec_kinds = _spread(_weighted(("执", "执恢", "执保"), (16, 3, 1)), 5)
        self._basis_kinds = _spread(_weighted(("民初", "民特", "刑初"), (17, 2, 1)), 5)
        self._cents = tuple(f".{c:02d}" for c in range(100))
        self._draw_pools()

    def _draw_pools(self) -> None:
        """Pools drawn once per generator (from the same stream), picked from per row.

        Drawing the dates and case numbers of every row afresh would cost about a
        fifth of the row; 2**15 date triples and 2**12 numbers look just as varied.
        """
        rand = self._rand
        self._date_triples = tuple(self._draw_dates() for _ in range(1 << 15))
        self._case_numbers = tuple(str(1 + int(rand() ** 2 * 30000)) for _ in range(1 << 12))
        self._basis_numbers = tuple(str(1 + int(rand() ** 2 * 40000)) for _ in range(1 << 12))
        years = {int(filed[:4]) for filed, _, _ in self._date_triples}
        self._basis_years = {
            str(y): (str(y), str(y), str(y - 1), str(y - 2)) for y in sorted(years)
        }

    # -- people -------------------------------------------------------------

    def _han_name(self, male: bool) -> str:
        bits = self._bits
        given = self._male if male else self._female
        if self._rand() < 0.7:
            return self._surnames[bits(9)] + given[bits(8)] + given[bits(8)]
        return self._surnames[bits(9)] + given[bits(8)]

    def _minority(self, male: bool) -> tuple[str, _Region]:
        """A Uyghur, Tibetan or Mongolian name with a middle dot, and a home region."""
        rand = self._rand
        people = _MINORITIES[int(rand() * len(_MINORITIES))]
        first = people.male if male else people.female
        name = first[int(rand() * len(first))] + "\u00b7"
        name += people.second[int(rand() * len(people.second))]
        code = people.regions[int(rand() * len(people.regions))]
        return name, self._t.region_by_code[code]

    def _resident_id(self, region: _Region, male: bool) -> tuple[str, int]:
        """A valid resident ID of someone from ``region``, and their age at as_of."""
        ymd, birth_part, age = self._births[self._bits(17)]
        seq, seq_part = (self._t.male_seq if male else self._t.female_seq)[self._bits(9)]
        check = self._t.id_final[region.id_row[birth_part]][seq_part]
        return region.code + ymd + seq + check, age

    def _document(self) -> tuple[str, str]:
        """(id_type, number) of a passport or a Hong Kong, Macao or Taiwan permit."""
        r = self._rand()
        number = f"{int(self._rand() * 100_000_000):08d}"
        if r < 0.4:
            return "PASSPORT", ("E" if r < 0.3 else "G") + number
        if r < 0.8:
            return "HK_MACAO_PERMIT", ("H" if r < 0.6 else "M" if r < 0.7 else "C") + number
        return "TAIWAN_PERMIT", number

    def _person(self) -> tuple[dict[str, object], _Region]:
        rand = self._rand
        male = rand() < 0.7
        if rand() < 0.03:
            name, region = self._minority(male)
        else:
            name, region = self._han_name(male), self._regions[self._bits(7)]
        if rand() < 0.01:
            id_type, number = self._document()
            age = self._ages[self._bits(8)]
        else:
            id_type = "RESIDENT_ID"
            number, age = self._resident_id(region, male)
        subject: dict[str, object] = {
            "type": "PERSON",
            "name": name,
            "id_type": id_type,
            "id_number": number,
            "gender": "男" if male else "女",
            "age": age,
        }
        return subject, region

    # -- organisations ------------------------------------------------------

    def _uscc(self, region: _Region) -> str:
        """91 + region + a 9-character organisation code + the GB 32100 check character."""
        t, bits = self._t, self._bits
        rows = t.uscc_rows
        if self._rand() < 0.7:  # registered since 2015: MA + 7 characters
            code, part, pairs, k = "MA", region.uscc_new, t.uscc_pairs, 10
        else:  # a former organisation code: digits
            code, part, pairs, k = "", region.uscc_old, t.uscc_digit_pairs, 7
        for choices in pairs:
            text, p = choices[bits(k)]
            code += text
            part = rows[part][p]
        last, p = t.uscc_last[bits(5)]
        return "91" + region.code + code + last + t.uscc_final[part][p]

    def _org_name(self, region: _Region) -> str:
        bits = self._bits
        brand = self._brands[bits(6)] + self._brands[bits(6)]
        form = "股份有限公司" if self._rand() < 0.15 else "有限公司"
        return region.city + brand + self._industries[bits(5)] + form

    def _related(self, region: _Region, role: str, male: bool) -> dict[str, object]:
        home = region if self._rand() < 0.8 else self._regions[self._bits(7)]
        return {
            "role": role,
            "name": self._han_name(male),
            "id_type": "RESIDENT_ID",
            "id_number": self._resident_id(home, male)[0],
        }

    def _organisation(self) -> tuple[dict[str, object], list[dict[str, object]], _Region]:
        """The organisation, its 1 to 3 related persons (the legal representative first)."""
        rand = self._rand
        region = self._regions[self._bits(7)]
        legal = self._related(region, "LEGAL_REPRESENTATIVE", rand() < 0.8)
        related = [legal]
        r = rand()
        if r < 0.5:
            others = ("PRINCIPAL", "ACTUAL_CONTROLLER", "RESPONSIBLE_PERSON")
            first = int(rand() * 3)
            related.append(self._related(region, others[first], rand() < 0.7))
            if r < 0.2:
                second = others[(first + 1 + int(rand() * 2)) % 3]
                related.append(self._related(region, second, rand() < 0.7))
        subject: dict[str, object] = {
            "type": "ORGANIZATION",
            "name": self._org_name(region),
            "uscc": self._uscc(region),
            "legal_representative": legal["name"],
        }
        return subject, related, region

    # -- the case -----------------------------------------------------------

    def _money(self) -> tuple[str, str, str, str]:
        """(obligation, performance, performed part, unperformed part)."""
        rand, bits, cents = self._rand, self._bits, self._cents
        lo, span = self._amounts[bits(7)]
        yuan = lo + int(rand() * span)
        fen = 0 if rand() < 0.7 else int(rand() * 100)
        total = str(yuan) + cents[fen]
        prefix, suffix = self._obligations[bits(4)]
        if rand() < 0.8:
            return prefix + total + suffix, "全部未履行", "0.00元", total + "元"
        done = int((yuan * 100 + fen) * (0.05 + 0.75 * rand()))
        rest = yuan * 100 + fen - done
        return (
            prefix + total + suffix,
            "部分未履行",
            str(done // 100) + cents[done % 100] + "元",
            str(rest // 100) + cents[rest % 100] + "元",
        )

    def _draw_dates(self) -> tuple[str, str, str]:
        """ISO (filed_on, published_on, valid_until); about 10% already expired."""
        as_of, rand = self._as_of, self._rand
        if rand() < 0.1:
            published = as_of - 400 - int(rand() * (6 * 365 - 600))
            lo = published + 365
            valid = lo + int(rand() * (min(published + 5 * 365, as_of) - lo))
        else:
            published = as_of - int(rand() * (5 * 365 - 30))
            lo = max(published + 365, as_of + 1)
            valid = lo + int(rand() * (published + 5 * 365 + 1 - lo))
        filed = published - 10 - int(rand() * 170)
        dates, base = self._dates, self._date_base
        return dates[filed - base], dates[published - base], dates[valid - base]

    def _exemptions(self) -> list[dict[str, object]]:
        """One exemption window; half of them are open at as_of."""
        rand, as_of = self._rand, self._as_of
        r = rand()
        if r < 0.5:
            start, end = as_of - int(rand() * 30), as_of + int(rand() * 30)
        elif r < 0.75:
            start = as_of + 1 + int(rand() * 60)
            end = start + int(rand() * 14)
        else:
            end = as_of - 1 - int(rand() * 60)
            start = end - int(rand() * 14)
        channel = ("RAIL", "AIRLINE", "HOTEL")[int(rand() * 3)]
        dates, base = self._dates, self._date_base
        return [{"channel": channel, "from": dates[start - base], "until": dates[end - base]}]

    def _case(self, home: _Region, year: str) -> tuple[str, _Region, str, str]:
        """(case number, executing court, basis document, its issuer).

        The court is usually where the debtor lives or is registered; the basis
        document usually comes from the same court, up to two years earlier.
        """
        rand, bits, regions = self._rand, self._bits, self._regions
        court = home if rand() < 0.75 else regions[bits(7)]
        issuer = court if rand() < 0.8 else regions[bits(7)]
        kind, number = self._exec_kinds[bits(5)], self._case_numbers[bits(12)]
        case = f"({year}){court.case_prefix}{kind}{number}号"
        basis_year = self._basis_years[year][bits(2)]
        kind, number = self._basis_kinds[bits(5)], self._basis_numbers[bits(12)]
        basis = f"({basis_year}){issuer.case_prefix}{kind}{number}号"
        return case, court, basis, issuer.court

    def entry(self, index: int) -> Entry:
        rand = self._rand
        list_type = "SHIXIN" if rand() < 0.7 else "XIANGAO"
        related: list[dict[str, object]]
        if rand() < 0.75:
            subject, home = self._person()
            related = []
        else:
            subject, related, home = self._organisation()
        filed_on, published_on, valid_until = self._date_triples[self._bits(15)]
        case_number, court, basis_document, basis_issuer = self._case(home, filed_on[:4])
        obligation, performance, performed, unperformed = self._money()
        return {
            "entry_id": "E" + str(index).zfill(10),
            "list_type": list_type,
            "subject": subject,
            "related_persons": related,
            "case_number": case_number,
            "court": court.court,
            "basis_document": basis_document,
            "basis_issuer": basis_issuer,
            "obligation": obligation,
            "performance": performance,
            "circumstance": self._circumstances[self._bits(7)],
            "published_on": published_on,
            "filed_on": filed_on,
            "performed_part": performed,
            "unperformed_part": unperformed,
            "severity": self._severities[self._bits(7)],
            "valid_until": valid_until,
            "status": "ACTIVE" if rand() < 0.95 else "SUSPENDED",
            "exemptions": self._exemptions() if rand() < 0.01 else [],
        }


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def iter_entries(count: int, seed: int, as_of: datetime.date) -> Iterator[dict[str, object]]:
    """Yield ``count`` snapshot entries (DESIGN section 4 format).

    Deterministic for ``(count, seed, as_of)``; the first ``n`` entries do not
    depend on ``count``. Entry ids are ``E`` + the zero-padded index from 1.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    generator = _Generator(seed, as_of)
    entry = generator.entry
    for index in range(1, count + 1):
        yield entry(index)


def _write_rows(
    out: BinaryIO,
    rows: Iterator[Entry],
    progress: Callable[[int], None] | None,
) -> int:
    """Serialise ``rows`` onto ``out`` in chunks; report progress; return the count."""
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    chunk: list[bytes] = []
    written = reported = 0
    for entry in rows:
        chunk.append(dumps(entry, option=newline))
        if len(chunk) >= _CHUNK_ROWS:
            out.write(b"".join(chunk))
            written += len(chunk)
            chunk.clear()
            if progress is not None and written - reported >= _PROGRESS_ROWS:
                progress(written)
                reported = written
    if chunk:
        out.write(b"".join(chunk))
        written += len(chunk)
    if progress is not None and written != reported:
        progress(written)
    return written


def write_snapshot(
    path: str | os.PathLike[str],
    count: int,
    seed: int,
    as_of: datetime.date,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write a JSON Lines snapshot of ``count`` entries and return ``count``.

    The first line is the snapshot header (includes no delta; published at the
    start of ``as_of``, China time).

    UTF-8, one entry per line, byte-identical for the same arguments. The rows
    go to ``path + '.part'``, which is synced and renamed onto ``path`` only
    when complete, so a directory watcher never sees half a file (and a failed
    write leaves none). ``progress`` is called with the number of rows written
    every 100,000 rows, and once more at the end unless that was just reported.
    """
    final = os.fspath(path)
    partial = final + ".part"
    try:
        with open(partial, "wb") as out:
            # The header (loader.feed): a generated list holds no delta, and its
            # feed time is the start of its as-of day, China time.
            out.write(header_row(0, datetime.datetime.combine(as_of, datetime.time(), CHINA_TZ)))
            written = _write_rows(out, iter_entries(count, seed, as_of), progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return written
