"""The retrieval benchmark's corpus and queries, written for this project.

Two parts, both deterministic:

* ANCHORS: hand-written passages in English and Chinese on varied subjects, each
  with a question that paraphrases it (sharing few words with it) and, for some,
  a question in the other language (cross-lingual: zh->en and en->zh).
* Generated passages: records (error codes, service runbooks, places, recipes,
  incidents, products) rendered by several templates per kind in both languages
  from varied fills. They are the haystack, and the targets of the exact-term
  questions ("what does error KX-4172 mean?"), whose answer only a passage that
  names the term can give.

corpus() returns (passages, queries): passages are {"id", "lang", "text"};
queries are {"id", "lang", "kind", "text", "relevant": [passage ids]}.
"""

from __future__ import annotations

import random

# (passage language, passage, same-language paraphrase, other-language question
# or "")
ANCHORS_EN = [
    ("The cat sat on the mat and watched the birds outside the window.",
     "feline resting on a rug", "小猫趴在垫子上"),
    ("Celery distributes asynchronous tasks to worker processes through a "
     "message broker such as Redis or RabbitMQ.",
     "how do background jobs reach the machines that execute them",
     "异步任务是怎样分发给工作进程的"),
    ("Drink at least two litres of water a day; dehydration causes headaches "
     "and tiredness.", "how much fluid should a person consume daily",
     "每天应该喝多少水"),
    ("The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
     "when was the famous iron landmark in the French capital finished",
     "埃菲尔铁塔是哪一年建成的"),
    ("Photosynthesis lets plants turn sunlight, water and carbon dioxide into "
     "sugar and oxygen.", "how do green leaves make food from light",
     "植物如何利用阳光制造养分"),
    ("To reset your password, open Settings, choose Security and click "
     "'Forgot password'; a link arrives by email.",
     "I can't log in because I lost my credentials", "忘记密码怎么办"),
    ("Interest rates rose by half a percentage point, making mortgages more "
     "expensive for home buyers.", "borrowing costs for buying a house went up",
     "房贷利率上调了"),
    ("Regular stretching before running lowers the risk of muscle injuries.",
     "how can joggers avoid pulling a hamstring", "跑步前拉伸有什么好处"),
    ("A database index speeds up lookups at the cost of slower writes and "
     "extra disk space.", "why do queries get faster but inserts slower",
     "数据库索引的代价是什么"),
    ("The train to Edinburgh leaves platform 4 at 09:15 and takes four hours.",
     "what time does the rail service to Scotland's capital depart", ""),
    ("Bees pollinate about a third of the crops that people eat.",
     "insects that help fruit and vegetables grow", "蜜蜂对农作物有什么作用"),
    ("Back up your files to an external drive every week so a disk failure does "
     "not lose your work.", "protecting documents against hard drive crashes",
     "如何防止硬盘损坏导致数据丢失"),
    ("The museum is closed on Mondays; on other days it opens from ten to six.",
     "which day can't I visit the gallery", ""),
    ("Antibiotics kill bacteria but have no effect on viruses such as the flu.",
     "do penicillin-type drugs help with influenza", "抗生素能治疗感冒吗"),
    ("Our refund policy allows returns within 30 days if the item is unused and "
     "in its original packaging.", "can I send back something I bought last week",
     "退货期限是多久"),
    ("Volcanic eruptions release ash that can ground aircraft for days.",
     "why were flights cancelled after the mountain exploded", ""),
    ("The quarterly report shows revenue grew 12 percent while costs stayed flat.",
     "sales went up but spending did not change", "季度收入增长了多少"),
    ("Use a thermometer: chicken is safely cooked when its centre reaches 74 "
     "degrees Celsius.", "how do I know poultry is done", "鸡肉要烤到多少度才安全"),
    ("Whales are mammals; they breathe air through a blowhole on top of their "
     "head.", "how do big sea creatures get oxygen", ""),
    ("The library lends e-books for two weeks; they disappear from your device "
     "when the loan ends.", "how long can I keep a borrowed digital book", ""),
    ("Solar panels produce less electricity on cloudy days but still work.",
     "do photovoltaic roofs generate power when it is overcast", "阴天太阳能板还能发电吗"),
    ("A circuit breaker trips when too much current flows, protecting the wiring "
     "from overheating.", "why did the power switch in the fuse box flip off", ""),
    ("Children learn languages faster when they hear them spoken at home every "
     "day.", "kids pick up a second tongue quickly through daily exposure",
     "孩子怎样更快学会外语"),
    ("Rate limiting rejects requests beyond a fixed number per minute to keep an "
     "API responsive.", "stopping clients from flooding the web service with calls",
     "接口限流的作用"),
    ("The Great Wall of China stretches for thousands of kilometres across the "
     "north of the country.", "how long is the ancient fortification in northern China",
     "长城有多长"),
    ("Coffee contains caffeine, which blocks the chemical that makes you feel "
     "sleepy.", "why does an espresso keep me awake", ""),
    ("Meetings are recorded and the transcript is shared with attendees the next "
     "morning.", "will I get the notes from the call", ""),
    ("Tomatoes ripen faster when stored next to bananas, which release ethylene "
     "gas.", "speeding up red fruit turning ripe", "怎样让西红柿熟得更快"),
    ("Two-factor authentication asks for a code from your phone in addition to "
     "your password.", "extra login step with a one-time number on my mobile",
     "什么是双重验证"),
    ("The marathon route follows the river for the first twenty kilometres.",
     "does the long-distance race run along the water", ""),
    ("Snow tyres have deeper treads that grip icy roads better.",
     "which wheels are best for winter driving", ""),
    ("Vaccines train the immune system to recognise a germ before a real "
     "infection happens.", "how do jabs prepare the body's defences", "疫苗是怎样起作用的"),
    ("Invoices unpaid after 60 days are passed to the collections team.",
     "what happens when a customer never settles the bill", ""),
    ("The violin has four strings tuned in fifths: G, D, A and E.",
     "how is the fiddle tuned", ""),
    ("Saving ten percent of each salary builds an emergency fund within a few "
     "years.", "putting money aside for unexpected expenses", "怎样建立应急储蓄"),
    ("A git merge conflict happens when two branches change the same lines of a "
     "file.", "why can't version control combine my branch automatically",
     "合并分支时为什么会冲突"),
    ("Penguins cannot fly, but they swim fast using their wings as flippers.",
     "flightless birds that are good swimmers", "企鹅会飞吗"),
    ("Heavy rain is forecast for the weekend, with flooding possible near the "
     "coast.", "will there be a storm on Saturday and Sunday", "周末天气怎么样"),
    ("Noise-cancelling headphones play an inverted sound wave to cancel steady "
     "background hum.", "how do earphones block out engine drone", ""),
    ("The warranty covers manufacturing defects for two years but not accidental "
     "damage.", "is a dropped phone repaired for free under the guarantee",
     "保修包括意外损坏吗"),
]  # fmt: skip

ANCHORS_ZH = [
    ("异步任务队列把耗时的工作交给后台工作进程处理，网页请求可以立即返回。",
     "怎样让网页不用等待耗时操作完成", "background job queue so web requests return fast"),
    ("故宫位于北京市中心，是明清两代的皇家宫殿，现在是博物院。",
     "中国古代皇帝住在哪里", "where did Chinese emperors live in Beijing"),
    ("熊猫主要以竹子为食，每天要吃十几公斤。", "大熊猫吃什么",
     "what do pandas eat"),
    ("高铁从上海到北京大约需要四个半小时。", "坐动车去首都要多久",
     "how long is the high-speed train from Shanghai to Beijing"),
    ("春节是中国最重要的传统节日，家人会团聚吃年夜饭。", "农历新年大家通常做什么",
     "what do families do at Chinese New Year"),
    ("绿茶不经过发酵，保留了较多的茶多酚。", "哪种茶叶没有发酵过",
     "which tea is not fermented"),
    ("服务器磁盘空间不足时，日志无法写入，服务可能会崩溃。", "硬盘满了会有什么后果",
     "what happens when the server disk is full"),
    ("太极拳动作缓慢柔和，适合老年人锻炼身体。", "适合老人的健身运动",
     "gentle exercise for elderly people"),
    ("用户注销账号后，个人数据会在三十天内被永久删除。", "销户以后我的资料还会保留吗",
     "is my data kept after I close my account"),
    ("饺子是北方人冬至时常吃的食物。", "冬至北方吃什么", ""),
    ("长江是中国最长的河流，全长约六千三百公里。", "我国第一大河有多长",
     "what is the longest river in China"),
    ("发票开具后如需修改，必须先作废原发票再重新开具。", "开错的票据怎么更正", ""),
    ("每天睡眠不足六小时会影响记忆力和注意力。", "熬夜对大脑有什么影响",
     "does too little sleep hurt memory"),
    ("微信支付和支付宝是国内最常用的移动支付方式。", "在中国用手机付款一般用什么",
     "how do people pay with phones in China"),
    ("桂林山水以喀斯特地貌闻名，漓江两岸风景秀丽。", "哪里有石灰岩山峰和美丽的江景", ""),
    ("接口返回429状态码表示请求过于频繁，需要稍后重试。", "服务器说我访问太多次了",
     "the API says too many requests"),
    ("孕妇应避免饮酒，酒精会影响胎儿发育。", "怀孕期间能喝酒吗", ""),
    ("地铁末班车一般在晚上十一点左右发出。", "最后一班轨道交通几点开",
     "when does the last subway train leave"),
    ("员工每年享有五天带薪年假，工作满十年增加到十天。", "上班族一年能休几天假",
     "how many days of paid holiday do employees get"),
    ("数据库主从复制可以把读请求分散到多个副本上。", "怎样减轻主库的查询压力", ""),
    ("中秋节人们赏月、吃月饼，象征团圆。", "八月十五有什么习俗",
     "Mid-Autumn Festival customs"),
    ("电动汽车在低温环境下续航里程会明显下降。", "冬天开电车为什么跑不远",
     "electric cars lose range in cold weather"),
    ("快递签收前应当场检查包装是否破损。", "收包裹时要注意什么", ""),
    ("定期更换密码并且不要在多个网站使用同一个密码。", "怎样保证账户安全",
     "tips for keeping accounts secure"),
    ("黄山以奇松、怪石、云海和温泉著称。", "安徽有名的山有哪些景观", ""),
    ("宝宝六个月后可以开始添加辅食，比如米糊。", "婴儿什么时候能吃饭",
     "when can babies start solid food"),
    ("缓存可以减少数据库访问次数，但要注意数据过期的问题。", "为什么要在应用和存储之间加一层内存",
     "why put a cache in front of the database"),
    ("端午节要赛龙舟、吃粽子，纪念诗人屈原。", "五月初五的传统活动", ""),
    ("空气质量指数超过两百时，建议减少户外活动。", "雾霾严重的时候该怎么办",
     "what to do when air pollution is very high"),
    ("合同在双方签字盖章后生效。", "协议什么时候开始有效", ""),
    ("西湖位于杭州，苏堤春晓是著名的十景之一。", "杭州最有名的湖", ""),
    ("洗衣机长时间不清洁，滚筒里会滋生霉菌。", "洗衣服的机器为什么有异味",
     "why does the washing machine smell"),
    ("申请签证需要准备护照、照片和银行流水。", "办出国手续要带哪些材料",
     "documents needed for a visa application"),
    ("乒乓球被称为中国的国球。", "中国人最擅长的小球运动", ""),
    ("新员工入职第一周需要完成安全培训。", "刚来公司要上什么课", ""),
    ("豆腐是用大豆磨浆后加卤水或石膏点制而成的。", "豆制品是怎么做出来的",
     "how is tofu made"),
    ("备份文件应保存在与原数据不同的地点。", "灾难恢复的副本放在哪里", ""),
    ("牙齿每天要刷两次，每次至少两分钟。", "怎样保护牙齿", "how often should I brush my teeth"),
    ("敦煌莫高窟保存了大量精美的佛教壁画。", "甘肃有名的石窟艺术", ""),
    ("滴滴打车可以在手机上叫出租车和快车。", "用什么应用叫车", ""),
]  # fmt: skip

# --- generated passages ------------------------------------------------------

COMPONENTS = [("billing", "计费"), ("search index", "搜索索引"),
              ("upload service", "上传服务"), ("login gateway", "登录网关"),
              ("report builder", "报表生成器"), ("mail relay", "邮件中继"),
              ("payment bridge", "支付桥接"), ("image resizer", "图片压缩")]  # fmt: skip
CAUSES = [("the certificate has expired", "证书已过期"),
          ("the disk quota is exhausted", "磁盘配额已用完"),
          ("a lock is held by another job", "另一个作业持有锁"),
          ("the upstream timed out", "上游服务超时"),
          ("the configuration file is missing a key", "配置文件缺少字段"),
          ("the token was revoked", "令牌已被吊销"),
          ("the schema version does not match", "数据结构版本不匹配")]  # fmt: skip
FIXES = [("renew it with the ops console", "在运维控制台续期"),
         ("free space or raise the quota", "清理空间或提高配额"),
         ("wait for the other job, then retry", "等待另一个作业结束后重试"),
         ("retry after five minutes", "五分钟后重试"),
         ("add the key and restart", "补上字段后重启"),
         ("sign in again to get a new token", "重新登录获取新令牌"),
         ("run the migration first", "先执行数据迁移")]  # fmt: skip
TOWNS = ["Alderbrook", "Kestrel Bay", "Marrowdale", "Pinefold", "Quillhaven",
         "Rushmere", "Stonecrest", "Thornwick", "Umberfield", "Valecross",
         "Wrenfield", "Yarrowgate"]  # fmt: skip
TOWNS_ZH = ["青石镇", "云溪村", "白鹭洲", "松岗镇", "落霞湾", "枫林镇", "梨花坞",
            "清河镇", "雁门村", "桃源镇", "金沙湾", "翠屏镇"]  # fmt: skip
PRODUCES = [("apples", "苹果"), ("wool", "羊毛"), ("cheese", "奶酪"),
            ("glassware", "玻璃器皿"), ("honey", "蜂蜜"), ("paper", "纸张"),
            ("rice", "大米"), ("silk", "丝绸")]  # fmt: skip
DISHES = [("lentil soup", "扁豆汤"), ("mushroom risotto", "蘑菇烩饭"),
          ("ginger chicken", "姜汁鸡"), ("plum cake", "李子蛋糕"),
          ("pumpkin curry", "南瓜咖喱"), ("sesame noodles", "芝麻面"),
          ("leek pie", "韭葱派"), ("pepper beef", "黑椒牛肉")]  # fmt: skip
PRODUCT_NAMES = ["Orbit", "Lumen", "Cascade", "Nimbus", "Harbor", "Summit",
                 "Tidal", "Ember", "Quartz", "Meridian"]  # fmt: skip
PRODUCT_KINDS = [("router", "路由器"), ("desk lamp", "台灯"), ("kettle", "电水壶"),
                 ("e-reader", "电子阅读器"), ("air purifier", "空气净化器"),
                 ("drone", "无人机")]  # fmt: skip


def _error_passage(rng, code: str, lang: str) -> str:
    comp, cause, fix = rng.choice(COMPONENTS), rng.choice(CAUSES), rng.choice(FIXES)
    if lang == "en":
        return rng.choice([
            f"Error {code} comes from the {comp[0]} when {cause[0]}. To clear it, "
            f"{fix[0]}.",
            f"If the {comp[0]} logs {code}, {cause[0]}; operators should {fix[0]}.",
            f"Runbook entry {code}: raised by the {comp[0]}. Cause: {cause[0]}. "
            f"Action: {fix[0]}.",
        ])  # fmt: skip
    return rng.choice([
        f"错误码 {code} 由{comp[1]}报出，原因是{cause[1]}。处理方法：{fix[1]}。",
        f"当{comp[1]}出现 {code} 时，说明{cause[1]}，请{fix[1]}。",
        f"运维手册条目 {code}：{comp[1]}，{cause[1]}，建议{fix[1]}。",
    ])  # fmt: skip


def _town_passage(rng, i: int, lang: str) -> str:
    produce = rng.choice(PRODUCES)
    people = rng.randrange(800, 90000)
    year = rng.randrange(1120, 1900)
    if lang == "en":
        town = TOWNS[i % len(TOWNS)] + (
            f" {['North', 'South', 'Upper', 'Lower'][i % 4]}"
        )
        return rng.choice([
            f"{town} is a market town of {people:,} people, founded in {year} and "
            f"known for its {produce[0]}.",
            f"Founded around {year}, {town} grew rich trading {produce[0]}; about "
            f"{people:,} people live there today.",
            f"Visitors to {town} can tour workshops making {produce[0]}, a craft "
            f"practised there since {year}.",
        ])  # fmt: skip
    town = ["东", "西", "南", "北"][i % 4] + TOWNS_ZH[i % len(TOWNS_ZH)]
    return rng.choice([
        f"{town}建于{year}年，人口约{people}人，以出产{produce[1]}闻名。",
        f"{town}自{year}年起就以{produce[1]}贸易为生，现有居民{people}人。",
        f"游客可以在{town}参观制作{produce[1]}的作坊，这门手艺始于{year}年。",
    ])  # fmt: skip


def _recipe_passage(rng, lang: str) -> str:
    dish = rng.choice(DISHES)
    minutes = rng.choice([15, 20, 25, 30, 40, 45, 60, 90])
    serves = rng.randrange(2, 7)
    if lang == "en":
        return rng.choice([
            f"This {dish[0]} serves {serves} and takes {minutes} minutes; season "
            f"at the end so the flavour stays bright.",
            f"For {dish[0]}, simmer for {minutes} minutes and rest before serving "
            f"{serves} people.",
            f"A weeknight {dish[0]}: {minutes} minutes from chopping board to "
            f"table, enough for {serves}.",
        ])  # fmt: skip
    return rng.choice([
        f"这道{dish[1]}可供{serves}人食用，需要{minutes}分钟，最后再调味。",
        f"做{dish[1]}时小火煮{minutes}分钟，出锅前静置片刻，够{serves}人吃。",
        f"家常{dish[1]}：从备菜到上桌只要{minutes}分钟，分量适合{serves}人。",
    ])  # fmt: skip


def _product_passage(rng, model: str, lang: str) -> str:
    kind = rng.choice(PRODUCT_KINDS)
    watts, months = rng.randrange(5, 2000), rng.choice([12, 18, 24, 36])
    if lang == "en":
        return rng.choice([
            f"The {model} {kind[0]} draws {watts} W and comes with a {months}-month "
            f"warranty.",
            f"Model {model} is our {kind[0]}; it uses {watts} watts at full load and "
            f"is guaranteed for {months} months.",
        ])  # fmt: skip
    return rng.choice([
        f"{model} 型{kind[1]}功率为{watts}瓦，保修{months}个月。",
        f"我们的{kind[1]}型号 {model}，满载功耗{watts}瓦，质保期{months}个月。",
    ])  # fmt: skip


def _incident_passage(rng, ticket: str, lang: str) -> str:
    comp = rng.choice(COMPONENTS)
    minutes, day = rng.randrange(3, 240), rng.randrange(1, 29)
    if lang == "en":
        return rng.choice([
            f"Incident {ticket}: the {comp[0]} was down for {minutes} minutes on "
            f"the {day}th; a rollback restored service.",
            f"Post-mortem {ticket} — {minutes} minutes of degraded {comp[0]} on day "
            f"{day}, traced to a bad deploy.",
        ])  # fmt: skip
    return rng.choice([
        f"事故 {ticket}：{day}日{comp[1]}中断{minutes}分钟，回滚后恢复。",
        f"复盘报告 {ticket}：{comp[1]}在{day}日性能下降{minutes}分钟，原因是一次错误发布。",
    ])  # fmt: skip


def _code(rng, prefix: str, used: set) -> str:
    while True:
        code = f"{prefix}-{rng.randrange(1000, 9999)}"
        if code not in used:
            used.add(code)
            return code


def corpus(target_passages: int = 520, seed: int = 22) -> tuple[list, list]:
    rng = random.Random(seed)
    passages: list[dict] = []
    queries: list[dict] = []

    def add_passage(lang: str, text: str) -> str:
        pid = f"p{len(passages)}"
        passages.append({"id": pid, "lang": lang, "text": text})
        return pid

    def add_query(lang: str, kind: str, text: str, relevant: list[str]) -> None:
        queries.append({"id": f"q{len(queries)}", "lang": lang, "kind": kind,
                        "text": text, "relevant": relevant})  # fmt: skip

    for lang, anchors in (("en", ANCHORS_EN), ("zh", ANCHORS_ZH)):
        other = "zh" if lang == "en" else "en"
        for text, paraphrase, cross in anchors:
            pid = add_passage(lang, text)
            add_query(lang, "paraphrase", paraphrase, [pid])
            if cross:
                add_query(other, f"cross {other}->{lang}", cross, [pid])

    used: set[str] = set()
    exact_targets = []  # (code, passage id, lang, kind)
    makers = ("error", "town", "recipe", "product", "incident")
    i = 0
    while len(passages) < target_passages:
        lang = "en" if i % 2 == 0 else "zh"
        kind = makers[i % len(makers)]
        if kind == "error":
            code = _code(rng, rng.choice(["KX", "QM", "ZT"]), used)
            pid = add_passage(lang, _error_passage(rng, code, lang))
            exact_targets.append((code, pid, lang, kind))
        elif kind == "product":
            code = rng.choice(PRODUCT_NAMES) + f" {_code(rng, 'X', used)[2:]}"
            pid = add_passage(lang, _product_passage(rng, code, lang))
            exact_targets.append((code, pid, lang, kind))
        elif kind == "incident":
            code = _code(rng, "INC", used)
            pid = add_passage(lang, _incident_passage(rng, code, lang))
            exact_targets.append((code, pid, lang, kind))
        elif kind == "town":
            add_passage(lang, _town_passage(rng, i, lang))
        else:
            add_passage(lang, _recipe_passage(rng, lang))
        i += 1

    questions = {
        ("error", "en"): "What does error {} mean and how do I fix it?",
        ("error", "zh"): "{} 这个错误怎么处理？",
        ("product", "en"): "How much power does the {} use?",
        ("product", "zh"): "{} 的功率是多少？",
        ("incident", "en"): "What happened in incident {}?",
        ("incident", "zh"): "{} 事故的经过是什么？",
    }
    for code, pid, lang, kind in rng.sample(exact_targets, 30):
        add_query(lang, "exact term", questions[kind, lang].format(code), [pid])
    return passages, queries
