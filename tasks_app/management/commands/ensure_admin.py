import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


def create_admin_if_missing(username: str = "admin") -> str | None:
    """Create the superuser with a random password and return the password, or
    None if the account exists (its password was shown when it was created)."""
    User = get_user_model()
    if User.objects.filter(username=username).exists():
        return None
    password = secrets.token_urlsafe(15)
    User.objects.create_superuser(username=username, email="", password=password)
    return password


def existing_admin_note(username: str) -> str:
    return (
        f"Admin account '{username}' exists; its password was printed when it "
        f"was created (reset it with: manage.py changepassword {username})."
    )


class Command(BaseCommand):
    help = (
        "Create the superuser 'admin' with a random password, printed once. If it "
        "exists, leave it alone (the password was shown when it was created)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, *args, username="admin", **options):
        password = create_admin_if_missing(username)
        if password is None:
            self.stdout.write(existing_admin_note(username))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Created admin account  username: {username}  password: {password}\n"
                "This password is shown only once."
            )
        )
