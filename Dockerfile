FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN useradd --create-home claw && chown -R claw /app
USER claw
# 8000: web (gunicorn, WSGI); 8001: streams (the ASGI app, docker-compose.yml)
EXPOSE 8000 8001
