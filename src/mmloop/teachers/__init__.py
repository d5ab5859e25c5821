"""Teachers: where new samples come from, behind one interface (base.Teacher: prompt, send, parse).

annotations.py, the offline default, writes questions from the image's annotations;
openai_chat.py asks an OpenAI-compatible chat model, through llm.py (journal.py, concurrency,
retries, circuit breaker), prompts.py (versioned templates) and structured.py (JSON replies).
ipo.py reviews a teacher's output and proposes prompt revisions.
"""
