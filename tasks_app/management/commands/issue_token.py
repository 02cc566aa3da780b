from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from tasks_app import tokens


class Command(BaseCommand):
    help = (
        "Issue a new API token for a user and print its key, once: only its hash "
        "is stored (--rotate revokes the user's other tokens first)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--rotate", action="store_true", help="Revoke the user's other tokens."
        )
        parser.add_argument("--name", default="", help="What the token is for.")
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Lifetime in days (default API_TOKEN_DAYS; 0: never expires).",
        )

    def handle(self, *args, username, rotate=False, name="", days=None, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}")
        if days is not None and days < 0:
            raise CommandError("--days must be 0 or more")
        if rotate:
            tokens.revoke(user.api_tokens.all())
        token, key = tokens.issue(user, name=name, days=days)
        until = f"{token.expires_at:%Y-%m-%d}" if token.expires_at else "never"
        # The key is the last field, for scripts: `issue_token admin | awk '{print $NF}'`
        self.stdout.write(f"new token for {username} (expires {until}): {key}")
